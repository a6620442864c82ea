"""Texture estimation by back-projection (seed 003, §4 "Data preprocessing").

The image colours of a subject are read at its visible vertices over one or more frames and the
per-vertex median over the frames where a vertex was seen is its colour; a UV texture is then
painted from the vertex colours through the faces' per-corner UVs.

A vertex is seen in a frame when (:func:`sample_vertex_colors`):

- it is a corner of a triangle visible at some pixel centre
  (:func:`fitkit.render.vertex_visibility`);
- its projection lies inside the image and the four pixels around it (the bilinear lookup) are all
  covered by the mesh, so silhouette vertices do not pick up background colours;
- the rendered depth at those four pixels is within ``depth_tolerance`` of the vertex's own depth,
  so vertices hidden behind another body part, or next to one in front, are not read through it.

Texture painting (:func:`paint_texture`): every texel covered by a triangle in UV space gets the
barycentric interpolation of the colours of the triangle's seen corners (weights renormalized over
the seen ones). Texels with no seen corner and those between the UV charts are first filled from
their filled neighbours for ``padding`` rounds (so bilinear lookups at chart borders stay on the
subject's colours), and the rest get the fallback colour: by default the median colour of all seen
vertices, i.e. the subject's dominant colour, which is a better guess for an unseen side than a
fixed grey.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fitkit.body.model import BodyModel, BodyOutput
from fitkit.geometry.camera import Camera
from fitkit.render.correspond import vertex_visibility
from fitkit.render.maps import interpolate_corners
from fitkit.render.rasterize import rasterize

FALLBACK_GREY = (0.5, 0.5, 0.5)
"""Fallback colour when no vertex at all was seen."""


@dataclass
class TextureEstimate:
    """A subject's estimated appearance.

    Attributes:
        vertex_colors: ``(V, 3)`` RGB in [0, 1]: the median over the frames that saw the vertex;
            the fallback colour for unseen vertices.
        visible: ``(V,)`` bool, seen in at least one frame.
        num_views: ``(V,)`` long, the frames that saw each vertex.
        texture: ``(3, S, S)`` RGB UV texture (rows top-down, as :func:`fitkit.render.texture_map`
            reads it).
        texel_seen: ``(S, S)`` bool, texels painted from seen vertices (not padding, not fallback).
        fallback: ``(3,)`` the colour of unseen vertices and texels.
    """

    vertex_colors: Tensor
    visible: Tensor
    num_views: Tensor
    texture: Tensor
    texel_seen: Tensor
    fallback: Tensor


def sample_vertex_colors(
    images: Tensor,
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    depth_tolerance: float = 0.05,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """Image colours at the projections of the vertices, and where they count as seen.

    Args:
        images: ``(N, 3, H, W)`` RGB in [0, 1], one per frame.
        vertices: ``(N, V, 3)`` camera-frame vertices of the subject in each frame.
        faces: ``(F, 3)`` long.
        camera: N cameras (or one).
        depth_tolerance: meters between a vertex's depth and the rendered depth at its pixel.
        backend: rasterizer backend.
    Returns:
        ``(N, V, 3)`` bilinearly sampled colours and ``(N, V)`` bool, seen (see the module doc).
    """
    frames, _, height, width = images.shape
    num_vertices = vertices.shape[1]
    fragments = rasterize(vertices, faces, camera, (height, width), backend=backend)
    seen = vertex_visibility(fragments, faces, num_vertices)
    pixels = camera.to(device=vertices.device, dtype=vertices.dtype).project(vertices)
    u, v = pixels.unbind(-1)
    seen &= (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)

    frame = torch.arange(frames, device=vertices.device)[:, None]
    for du in (0, 1):
        for dv in (0, 1):
            col = (u.floor().long() + du).clamp(0, width - 1)
            row = (v.floor().long() + dv).clamp(0, height - 1)
            seen &= fragments.mask[frame, row, col]
            seen &= (fragments.depth[frame, row, col] - vertices[..., 2]).abs() <= depth_tolerance

    grid = torch.stack([2 * u / max(width - 1, 1) - 1, 2 * v / max(height - 1, 1) - 1], dim=-1)
    colors = F.grid_sample(images.to(grid.dtype), grid[:, None], mode="bilinear",
                           padding_mode="border", align_corners=True)  # (N, 3, 1, V)
    return colors[:, :, 0].transpose(1, 2), seen


def estimate_vertex_colors(
    images: Tensor,
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    depth_tolerance: float = 0.05,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """Per-vertex median colour over the frames that saw each vertex.

    Args:
        images, vertices, faces, camera, depth_tolerance, backend: see
            :func:`sample_vertex_colors`.
    Returns:
        ``(V, 3)`` colours (NaN for vertices no frame saw) and ``(V,)`` long view counts.
    """
    colors, seen = sample_vertex_colors(images, vertices, faces, camera, depth_tolerance, backend)
    masked = torch.where(seen[..., None], colors, torch.nan)
    return torch.nanquantile(masked, 0.5, dim=0), seen.sum(0)


def fallback_color(vertex_colors: Tensor, valid: Tensor) -> Tensor:
    """The default colour of what was not seen: the per-channel median of the valid vertices'
    colours, :data:`FALLBACK_GREY` when none is valid.

    Args:
        vertex_colors: ``(V, 3)``; valid: ``(V,)`` bool.
    Returns:
        ``(3,)``.
    """
    if not bool(valid.any()):
        return vertex_colors.new_tensor(FALLBACK_GREY)
    return vertex_colors[valid].median(dim=0).values


def paint_texture(
    vertex_colors: Tensor,
    valid: Tensor,
    faces: Tensor,
    vt: Tensor,
    ft: Tensor,
    size: int = 256,
    fallback: Tensor | None = None,
    padding: int = 2,
) -> tuple[Tensor, Tensor]:
    """A UV texture from per-vertex colours (see the module doc).

    The UV layout is rasterized with :func:`fitkit.render.rasterize` (the per-corner UVs as
    vertices on the plane ``z = 1`` seen by a unit-focal camera, in float64), which gives every
    texel its triangle and barycentrics.

    Args:
        vertex_colors: ``(V, 3)`` RGB in [0, 1] (values of invalid vertices are ignored).
        valid: ``(V,)`` bool, the vertices whose colour is known.
        faces: ``(F, 3)`` long vertex indices; vt: ``(T, 2)`` UVs (OBJ convention, v up);
            ft: ``(F, 3)`` per-corner UV indices.
        size: texture side S in texels.
        fallback: ``(3,)`` colour of the unpainted texels; default the median of the valid
            vertices' colours (:data:`FALLBACK_GREY` when none is valid).
        padding: rounds of neighbour filling before the fallback.
    Returns:
        ``(3, S, S)`` texture and ``(S, S)`` bool, texels painted from valid vertices.
    """
    dtype = vertex_colors.dtype if vertex_colors.is_floating_point() else torch.float32
    device = vertex_colors.device
    valid = valid.to(device)
    if fallback is None:
        fallback = fallback_color(vertex_colors.to(dtype), valid)
    vt = vt.to(device=device, dtype=torch.float64)  # float32 leaves holes on shared edges
    uv_points = torch.stack([vt[:, 0] * size - 0.5, (1 - vt[:, 1]) * size - 0.5,
                             torch.ones_like(vt[:, 0])], dim=-1)
    unit = torch.ones(1, 2, dtype=torch.float64, device=device)
    plane = Camera(unit, torch.zeros_like(unit), torch.full_like(unit, float(size)))
    fragments = rasterize(uv_points[None], ft.to(device), plane, (size, size))
    known = valid.to(torch.float64)[:, None]
    colors = torch.where(valid[:, None], vertex_colors.to(torch.float64), 0.0)
    corners = torch.cat([colors * known, known], dim=-1)[faces.to(device)]  # (F, 3, 4)
    painted = interpolate_corners(corners, fragments)[0].to(dtype)  # (S, S, 4)
    weight = painted[..., 3:]
    seen = weight[..., 0] > 1e-6
    texture = torch.where(seen[..., None], painted[..., :3] / weight.clamp(min=1e-6), 0.0)
    texture = texture.permute(2, 0, 1)[None]  # (1, 3, S, S)
    filled = seen[None, None].to(dtype)
    kernel = torch.ones(1, 1, 3, 3, dtype=dtype, device=device)
    for _ in range(padding):
        count = F.conv2d(filled, kernel, padding=1)
        total = F.conv2d(texture * filled, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        grow = (filled == 0) & (count > 0)
        texture = torch.where(grow, total / count.clamp(min=1), texture)
        filled = torch.where(grow, 1.0, filled)
    texture = torch.where(filled > 0, texture, fallback.to(dtype)[None, :, None, None])
    return texture[0].clamp(0, 1), seen


def estimate_texture(
    images: Tensor,
    body: BodyModel,
    outputs: BodyOutput,
    camera: Camera,
    size: int = 256,
    depth_tolerance: float = 0.05,
    padding: int = 2,
    backend: str = "torch",
) -> TextureEstimate:
    """Estimate a subject's vertex colours and UV texture from frames with known bodies.

    Args:
        images: ``(N, 3, H, W)`` RGB in [0, 1], N frames of one subject.
        body: its body model (faces and UVs).
        outputs: the body in each frame, ``vertices`` ``(N, V, 3)`` in the camera frame.
        camera: N cameras (or one).
        size: texture side S.
        depth_tolerance, backend: see :func:`sample_vertex_colors`; padding: see
            :func:`paint_texture`.
    Returns:
        A :class:`TextureEstimate`.
    """
    if body.uv is None:
        raise ValueError(f"body model {body.source} has no UVs to paint a texture on")
    vertices = outputs.vertices.detach()
    if images.shape[0] != vertices.shape[0]:
        raise ValueError(f"{images.shape[0]} images for {vertices.shape[0]} bodies")
    colors, num_views = estimate_vertex_colors(images, vertices, body.faces, camera,
                                               depth_tolerance, backend)
    visible = num_views > 0
    vt, ft = body.uv
    fallback = fallback_color(colors, visible)
    texture, texel_seen = paint_texture(colors, visible, body.faces, vt, ft, size, fallback,
                                        padding)
    return TextureEstimate(
        vertex_colors=torch.where(visible[:, None], colors, fallback),
        visible=visible,
        num_views=num_views,
        texture=texture,
        texel_seen=texel_seen,
        fallback=fallback,
    )
