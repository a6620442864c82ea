"""Rendering: rasterizer backends, render maps, vertex <-> pixel correspondences, textures.

``rasterize(vertices, faces, camera, image_size, backend="torch")`` returns :class:`Fragments`
(visible face, barycentrics, depth per pixel centre) from the pure-PyTorch backend (any device)
or from nvdiffrast (CUDA, optional); the maps and correspondences read only Fragments.
``fitkit.render.texture`` estimates a subject's texture by back-projection, and
``fitkit.render.shade`` draws shaded meshes and overlays for people to look at.
"""

from fitkit.render.correspond import (
    VertexValues,
    displacement_field,
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
from fitkit.render.rasterize import BACKENDS, rasterize
from fitkit.render.shade import flow_colors, grid, hsv_to_rgb, shade, to_uint8
from fitkit.render.texture import (
    TextureEstimate,
    estimate_texture,
    estimate_vertex_colors,
    fallback_color,
    paint_texture,
    sample_vertex_colors,
)

__all__ = [
    "BACKENDS",
    "Fragments",
    "RenderMaps",
    "TextureEstimate",
    "VertexValues",
    "depth_map",
    "displacement_field",
    "estimate_texture",
    "estimate_vertex_colors",
    "face_normals",
    "fallback_color",
    "flow_colors",
    "grid",
    "hsv_to_rgb",
    "interpolate",
    "interpolate_corners",
    "mask_map",
    "normal_map",
    "paint_texture",
    "pixel_to_vertex",
    "rasterize",
    "render_maps",
    "sample_vertex_colors",
    "shade",
    "texture_map",
    "to_uint8",
    "vertex_color_map",
    "vertex_colors",
    "vertex_normals",
    "vertex_to_pixel",
    "vertex_visibility",
]
