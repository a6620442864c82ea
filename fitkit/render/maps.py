"""Render maps on top of Fragments: interpolated attributes, texture, depth, normals, colours.

All maps are channels-last, ``(B, H, W, C)`` (or ``(B, H, W)``), like the Fragments they come
from, and 0 on empty pixels. Seed 003 (§3.1) renders texture RGB, depth, normals and unique vertex
colours of the current mesh as the input of its displacement network; :func:`render_maps` makes
all of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fitkit.render.fragments import Fragments


def interpolate_corners(corner_attributes: Tensor, fragments: Fragments) -> Tensor:
    """Interpolate per-corner attributes of the visible triangles with the barycentrics.

    Args:
        corner_attributes: ``(B, F, 3, C)`` or ``(F, 3, C)`` values at the three corners of each
            face (e.g. UVs, which are per corner at texture seams).
        fragments: from :func:`~fitkit.render.rasterize.rasterize`.
    Returns:
        ``(B, H, W, C)``; 0 on empty pixels.
    """
    batch, height, width = fragments.face_id.shape
    pixel = fragments.mask.flatten().nonzero().squeeze(1)
    face = fragments.face_id.flatten()[pixel]
    if corner_attributes.ndim == 3:
        corners = corner_attributes[face]
    else:
        corners = corner_attributes[torch.div(pixel, height * width, rounding_mode="floor"), face]
    values = (fragments.bary.reshape(-1, 3)[pixel][..., None] * corners).sum(-2)
    out = values.new_zeros(batch * height * width, values.shape[-1]).index_put((pixel,), values)
    return out.view(batch, height, width, -1)


def interpolate(attributes: Tensor, faces: Tensor, fragments: Fragments) -> Tensor:
    """Interpolate per-vertex attributes over the visible surface (perspective-correct).

    Args:
        attributes: ``(B, V, C)`` or ``(V, C)`` vertex attributes.
        faces: ``(F, 3)`` long, the faces the fragments index.
        fragments: from :func:`~fitkit.render.rasterize.rasterize`.
    Returns:
        ``(B, H, W, C)``; 0 on empty pixels.
    """
    corners = attributes[faces] if attributes.ndim == 2 else attributes[:, faces]
    return interpolate_corners(corners, fragments)


def mask_map(fragments: Fragments) -> Tensor:
    """``(B, H, W)`` float, 1 on covered pixels and 0 on empty ones."""
    return fragments.mask.to(fragments.bary.dtype)


def depth_map(fragments: Fragments) -> Tensor:
    """``(B, H, W)`` camera-frame depth ``z`` of the visible surface (meters), 0 on empty pixels."""
    return fragments.depth


def texture_map(texture: Tensor, uv: Tensor, faces_uv: Tensor, fragments: Fragments) -> Tensor:
    """Texture colours of the visible surface: UVs interpolated, then bilinear texture lookup.

    UVs follow the OBJ convention: ``(0, 0)`` is the bottom-left corner of the texture image and
    ``(1, 1)`` its top-right corner (the outer edges of the corner texels, ``align_corners=False``);
    lookups outside ``[0, 1]`` repeat the border texels.

    Args:
        texture: ``(B, C, Ht, Wt)`` or ``(C, Ht, Wt)`` texture images (rows top-down).
        uv: ``(T, 2)`` texture coordinates ``vt``; faces_uv: ``(F, 3)`` long, the ``ft`` indices
            into ``uv`` of each face corner.
        fragments: from :func:`~fitkit.render.rasterize.rasterize`.
    Returns:
        ``(B, H, W, C)``; 0 on empty pixels.
    """
    batch = fragments.face_id.shape[0]
    if texture.ndim == 3:
        texture = texture.expand(batch, *texture.shape)
    pixel_uv = interpolate_corners(uv[faces_uv].to(fragments.bary.dtype), fragments)
    grid = torch.stack([2 * pixel_uv[..., 0] - 1, 1 - 2 * pixel_uv[..., 1]], dim=-1)
    colours = F.grid_sample(
        texture.to(grid.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return colours.permute(0, 2, 3, 1) * fragments.mask[..., None]


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted face normals ``(x1 - x0) x (x2 - x0)`` (not normalized).

    Args:
        vertices: ``(B, V, 3)``; faces: ``(F, 3)`` long, counter-clockwise seen from outside.
    Returns:
        ``(B, F, 3)`` outward normals, length twice the face area.
    """
    x0, x1, x2 = vertices[:, faces].unbind(-2)
    return torch.linalg.cross(x1 - x0, x2 - x0)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit vertex normals: the area-weighted sum of the adjacent face normals.

    Args:
        vertices: ``(B, V, 3)``; faces: ``(F, 3)`` long.
    Returns:
        ``(B, V, 3)`` unit outward normals (0 for vertices of no face).
    """
    normals = face_normals(vertices, faces)
    summed = torch.zeros_like(vertices).index_add(
        1, faces.flatten(), normals.repeat_interleave(3, dim=1)
    )
    return F.normalize(summed, dim=-1)


def normal_map(
    vertices: Tensor, faces: Tensor, fragments: Fragments, smooth: bool = True
) -> Tensor:
    """Unit normals of the visible surface, in the frame of ``vertices`` (the camera frame).

    Normals point out of the body, so a surface facing the camera has normals towards ``-z``.

    Args:
        vertices: ``(B, V, 3)`` the vertices that were rasterized; faces: ``(F, 3)`` long.
        fragments: from :func:`~fitkit.render.rasterize.rasterize`.
        smooth: interpolate vertex normals and renormalize (smooth shading); otherwise the flat
            normal of the visible face.
    Returns:
        ``(B, H, W, 3)``; 0 on empty pixels.
    """
    if smooth:
        normals = interpolate(vertex_normals(vertices, faces), faces, fragments)
    else:
        flat = F.normalize(face_normals(vertices, faces), dim=-1)
        index = fragments.face_id.clamp(min=0).flatten(1)[..., None].expand(-1, -1, 3)
        normals = flat.gather(1, index).view(fragments.bary.shape)
    return F.normalize(normals, dim=-1) * fragments.mask[..., None]


def vertex_colors(rest_vertices: Tensor) -> Tensor:
    """Unique vertex colours (seed 003): rest-pose positions scaled to ``[0, 1]`` per axis.

    Args:
        rest_vertices: ``(V, 3)`` or ``(B, V, 3)`` rest-pose (template) vertices.
    Returns:
        Colours of the same shape, each axis mapped from its ``[min, max]`` to ``[0, 1]``.
    """
    low = rest_vertices.amin(dim=-2, keepdim=True)
    span = rest_vertices.amax(dim=-2, keepdim=True) - low
    return (rest_vertices - low) / span.clamp(min=torch.finfo(span.dtype).tiny)


def vertex_color_map(rest_vertices: Tensor, faces: Tensor, fragments: Fragments) -> Tensor:
    """The unique vertex colour render: :func:`vertex_colors` interpolated over the surface.

    Args:
        rest_vertices: ``(V, 3)`` or ``(B, V, 3)``; faces: ``(F, 3)`` long.
    Returns:
        ``(B, H, W, 3)``; 0 on empty pixels.
    """
    return interpolate(vertex_colors(rest_vertices), faces, fragments)


@dataclass
class RenderMaps:
    """The renders seed 003 feeds its displacement network, channels-last.

    Attributes:
        rgb: ``(B, H, W, C)`` texture colours, or None without a texture.
        depth: ``(B, H, W)`` camera-frame z (0 empty).
        normal: ``(B, H, W, 3)`` unit camera-frame normals (0 empty).
        vertex_color: ``(B, H, W, 3)`` unique vertex colours (0 empty).
        mask: ``(B, H, W)`` float coverage.
    """

    rgb: Tensor | None
    depth: Tensor
    normal: Tensor
    vertex_color: Tensor
    mask: Tensor


def render_maps(
    vertices: Tensor,
    faces: Tensor,
    fragments: Fragments,
    rest_vertices: Tensor,
    texture: Tensor | None = None,
    uv: Tensor | None = None,
    faces_uv: Tensor | None = None,
) -> RenderMaps:
    """All maps of one rasterization.

    Args:
        vertices: ``(B, V, 3)`` the rasterized camera-frame vertices; faces: ``(F, 3)`` long.
        fragments: their Fragments.
        rest_vertices: ``(V, 3)`` rest-pose vertices for the unique vertex colours.
        texture, uv, faces_uv: as in :func:`texture_map` (all three, or none).
    """
    if texture is None:
        rgb = None
    elif uv is None or faces_uv is None:
        raise ValueError("a texture needs uv (vt) and faces_uv (ft)")
    else:
        rgb = texture_map(texture, uv, faces_uv, fragments)
    return RenderMaps(
        rgb=rgb,
        depth=depth_map(fragments),
        normal=normal_map(vertices, faces, fragments),
        vertex_color=vertex_color_map(rest_vertices, faces, fragments),
        mask=mask_map(fragments),
    )
