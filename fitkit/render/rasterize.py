"""The one rasterization entry point."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fitkit.geometry.camera import Camera
from fitkit.render.fragments import Fragments
from fitkit.render.nvdiffrast_backend import rasterize_nvdiffrast
from fitkit.render.torch_backend import rasterize_torch

BACKENDS: dict[str, Callable[..., Fragments]] = {
    "torch": rasterize_torch,
    "nvdiffrast": rasterize_nvdiffrast,
}
"""Rasterizer backends by name; all return the same Fragments."""

DEFAULT_NEAR = 0.01
DEFAULT_FAR = 100.0


def rasterize(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    image_size: tuple[int, int] | None = None,
    backend: str = "torch",
    near: float = DEFAULT_NEAR,
    far: float = DEFAULT_FAR,
    cull_backfaces: bool = False,
) -> Fragments:
    """Rasterize a batch of meshes given in the camera frame.

    Every pixel centre (integer pixel coordinates, ``(u, v) = (column, row)``, row 0 at the top)
    sees the nearest surface point along its ray with ``near <= z <= far``. Triangles that reach
    behind the near plane are clipped there (only their part in front is drawn); triangles outside
    the image draw nothing; degenerate (zero-area) and exactly edge-on triangles draw nothing. Both
    orientations are drawn unless ``cull_backfaces``. Where two triangles meet a pixel centre at
    the same depth (a shared edge), the smaller face index wins (``torch`` backend).

    Args:
        vertices: ``(B, V, 3)`` vertices in the camera frame (x right, y down, z forward, meters).
        faces: ``(F, 3)`` integer vertex indices, shared by the batch.
        camera: ``B`` cameras (or one, used for the whole batch); only their intrinsics count
            (world vertices go into the camera frame first: :meth:`Camera.to_camera`).
        image_size: ``(H, W)``; default ``camera.image_size`` (the same for the whole batch).
        backend: ``"torch"`` (pure PyTorch, any device) or ``"nvdiffrast"`` (CUDA).
        near, far: visible depth range (meters).
        cull_backfaces: skip triangles whose normal ``(x1 - x0) x (x2 - x0)`` faces away from the
            camera (fitkit's faces run counter-clockwise seen from outside).
    Returns:
        Fragments with ``face_id`` ``(B, H, W)`` (``-1`` empty), ``bary`` ``(B, H, W, 3)`` and
        ``depth`` ``(B, H, W)`` (camera-frame ``z``, 0 where empty).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {sorted(BACKENDS)}")
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    batch = vertices.shape[0]
    if camera.batch_size not in (1, batch):
        raise ValueError(f"{camera.batch_size} cameras for a batch of {batch} meshes")
    camera = camera.expand(batch)
    if image_size is None:
        sizes = camera.image_size.unique(dim=0)
        if len(sizes) != 1:
            raise ValueError("cameras of different image sizes: pass image_size=(H, W)")
        width, height = (int(x) for x in sizes[0].tolist())
        image_size = (height, width)
    image_size = (int(image_size[0]), int(image_size[1]))
    faces = faces.to(device=vertices.device, dtype=torch.long)
    return BACKENDS[backend](
        vertices, faces, camera, image_size, near=near, far=far, cull_backfaces=cull_backfaces
    )

