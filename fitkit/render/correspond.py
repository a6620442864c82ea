"""Vertex <-> pixel correspondences through the visible surface (seed 003, Eq. 2 and 5).

A pixel corresponds to the three corners of the triangle visible at its centre, weighted by the
barycentrics of the visible point. Per-vertex values become per-pixel values by barycentric
interpolation (Eq. 2, :func:`vertex_to_pixel`); per-pixel values go back to the vertices as the
barycentric-weighted average over the pixels whose visible triangle has the vertex as a corner
(Eq. 5, :func:`pixel_to_vertex`). A vertex is visible when it is a corner of at least one triangle
seen at some pixel centre (:func:`vertex_visibility`), which is the ``v_i`` of Eq. 7.

The exact displacement field between two meshes of the same topology (Eq. 1-2,
:func:`displacement_field`) is the per-vertex image motion ``P(v^gt) - P(v^init)`` carried to the
pixels of the initial mesh's render with :func:`vertex_to_pixel`: the displacement network's
training target, and the "ground-truth flow" of upper-bound experiments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fitkit.geometry.camera import Camera
from fitkit.render.fragments import Fragments
from fitkit.render.maps import interpolate
from fitkit.render.rasterize import rasterize


def vertex_visibility(fragments: Fragments, faces: Tensor, num_vertices: int) -> Tensor:
    """Vertices that are corners of at least one triangle visible at some pixel centre.

    A vertex whose triangles cover only a corner of a pixel between pixel centres, or are
    occluded everywhere, is not visible.

    Args:
        fragments: from :func:`~fitkit.render.rasterize.rasterize`.
        faces: ``(F, 3)`` long; num_vertices: ``V``.
    Returns:
        ``(B, V)`` bool.
    """
    batch = fragments.face_id.shape[0]
    face_id = fragments.face_id.flatten(1)
    seen = torch.zeros(batch, faces.shape[0] + 1, dtype=torch.bool, device=face_id.device)
    seen[torch.arange(batch, device=face_id.device)[:, None], face_id] = True
    corners = faces.flatten().expand(batch, -1)
    counts = torch.zeros(batch, num_vertices, device=face_id.device)
    counts.scatter_add_(1, corners, seen[:, :-1].repeat_interleave(3, dim=1).float())
    return counts > 0


def vertex_to_pixel(values: Tensor, faces: Tensor, fragments: Fragments) -> Tensor:
    """Per-pixel values from per-vertex values (seed 003, Eq. 2).

    Each covered pixel gets the barycentric interpolation of the values at the corners of its
    visible triangle; empty pixels get 0 (``fragments.mask`` tells them apart).

    Args:
        values: ``(B, V, C)`` or ``(V, C)`` per-vertex values (e.g. 2D displacements).
        faces: ``(F, 3)`` long; fragments: from :func:`~fitkit.render.rasterize.rasterize`.
    Returns:
        ``(B, H, W, C)``.
    """
    return interpolate(values, faces, fragments)


def displacement_field(
    gt_vertices: Tensor,
    init_vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    fragments: Fragments | None = None,
    image_size: tuple[int, int] | None = None,
    backend: str = "torch",
) -> Tensor:
    """The exact per-pixel displacement field from one mesh to another (seed 003, Eq. 1-2).

    Per vertex ``D_i = P(v_i^gt) - P(v_i^init)`` with the camera's projection ``P`` (Eq. 1); per
    pixel of the render of the initial mesh, the barycentric interpolation of ``D`` over its
    visible triangle (Eq. 2, :func:`vertex_to_pixel`).

    Args:
        gt_vertices: ``(B, V, 3)`` camera-frame vertices of the true (target) meshes.
        init_vertices: ``(B, V, 3)`` camera-frame vertices of the initial meshes.
        faces: ``(F, 3)`` long, shared by both.
        camera: B cameras (or one).
        fragments: the rasterization of ``init_vertices`` when the caller has it; else it is
            rasterized here with ``image_size`` (``(H, W)``, default the camera's) and
            ``backend``.
    Returns:
        ``(B, 2, H, W)`` displacements ``(du, dv)`` in pixels, 0 on pixels the initial mesh does
        not cover (``fragments.mask``).
    """
    if fragments is None:
        fragments = rasterize(init_vertices, faces, camera, image_size, backend=backend)
    per_vertex = camera.project(gt_vertices) - camera.project(init_vertices)  # (B, V, 2)
    return vertex_to_pixel(per_vertex, faces, fragments).permute(0, 3, 1, 2).contiguous()


@dataclass
class VertexValues:
    """Per-vertex values gathered from pixels.

    Attributes:
        values: ``(B, V, C)`` barycentric-weighted mean of the pixel values; 0 where not valid.
        weight: ``(B, V)`` sum of the vertex's barycentric weights over its pixels (0 for a
            vertex that no pixel sees).
        valid: ``(B, V)`` bool, ``weight > 0``.
    """

    values: Tensor
    weight: Tensor
    valid: Tensor


def pixel_to_vertex(
    pixel_values: Tensor, faces: Tensor, fragments: Fragments, num_vertices: int
) -> VertexValues:
    """Per-vertex values from per-pixel values (seed 003, Eq. 5).

    ``values[b, i] = sum_p bary_i(p) * pixel_values[b, p] / sum_p bary_i(p)`` over the covered
    pixels ``p`` whose visible triangle has vertex ``i`` as a corner.

    Args:
        pixel_values: ``(B, H, W, C)`` per-pixel values (e.g. predicted 2D displacements); values
            at empty pixels are ignored.
        faces: ``(F, 3)`` long; fragments: from :func:`~fitkit.render.rasterize.rasterize`.
        num_vertices: ``V``.
    Returns:
        VertexValues with ``values`` ``(B, V, C)``, ``weight`` and ``valid`` ``(B, V)``.
    """
    batch = fragments.face_id.shape[0]
    channels = pixel_values.shape[-1]
    pixel = fragments.mask.flatten().nonzero().squeeze(1)
    b = torch.div(pixel, fragments.face_id[0].numel(), rounding_mode="floor")
    vertex = b[:, None] * num_vertices + faces[fragments.face_id.flatten()[pixel]]
    dtype = torch.promote_types(pixel_values.dtype, fragments.bary.dtype)
    bary = fragments.bary.reshape(-1, 3)[pixel].to(dtype)
    weighted = bary[..., None] * pixel_values.reshape(-1, channels)[pixel][:, None, :].to(dtype)
    total = bary.new_zeros(batch * num_vertices, channels).index_add(
        0, vertex.flatten(), weighted.reshape(-1, channels)
    )
    weight = bary.new_zeros(batch * num_vertices).index_add(0, vertex.flatten(), bary.flatten())
    valid = weight > 0
    values = total / torch.where(valid, weight, torch.ones_like(weight))[:, None]
    return VertexValues(
        values=values.view(batch, num_vertices, channels),
        weight=weight.view(batch, num_vertices),
        valid=valid.view(batch, num_vertices),
    )
