"""Rendering: rasterizer backends, render maps and vertex <-> pixel correspondences.

``rasterize(vertices, faces, camera, image_size, backend="torch")`` returns :class:`Fragments`
(visible face, barycentrics, depth per pixel centre) from the pure-PyTorch backend (any device)
or from nvdiffrast (CUDA, optional); the maps and correspondences read only Fragments.
``fitkit.render.shade`` draws shaded meshes and overlays for people to look at.
"""

from fitkit.render.correspond import (
    VertexValues,
    pixel_to_vertex,
    vertex_to_pixel,
    vertex_visibility,
)
from fitkit.render.fragments import Fragments
from fitkit.render.maps import (
    RenderMaps,
    depth_map,
    face_normals,
    interpolate,
    interpolate_corners,
    mask_map,
    normal_map,
    render_maps,
    texture_map,
    vertex_color_map,
    vertex_colors,
    vertex_normals,
)
from fitkit.render.rasterize import BACKENDS, Rasterizer, rasterize
from fitkit.render.shade import flow_colors, grid, hsv_to_rgb, shade, to_uint8

__all__ = [
    "BACKENDS",
    "Fragments",
    "Rasterizer",
    "RenderMaps",
    "VertexValues",
    "depth_map",
    "face_normals",
    "flow_colors",
    "grid",
    "hsv_to_rgb",
    "interpolate",
    "interpolate_corners",
    "mask_map",
    "normal_map",
    "pixel_to_vertex",
    "rasterize",
    "render_maps",
    "shade",
    "texture_map",
    "to_uint8",
    "vertex_color_map",
    "vertex_colors",
    "vertex_normals",
    "vertex_to_pixel",
    "vertex_visibility",
]
