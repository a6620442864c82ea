"""GPU rasterizer on nvdiffrast (``backend="nvdiffrast"``), imported only when used.

nvdiffrast takes clip-space positions and returns, per pixel, ``(u, v, z / w, triangle_id + 1)``
with ``0`` in the last channel for empty pixels and rows ordered bottom-up (OpenGL). This module
builds the OpenGL projection from a :class:`~fitkit.geometry.camera.Camera` so that nvdiffrast's
pixel centres land on fitkit's integer pixel coordinates, and converts its output into the same
:class:`~fitkit.render.fragments.Fragments` as the PyTorch backend: rows flipped top-down, ids
shifted to ``-1`` for empty, barycentrics ``(u, v, 1 - u - v)`` (nvdiffrast weights corner 0 by
``u``, corner 1 by ``v``; they are already perspective-correct), depth as camera-frame ``z``.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
from torch import Tensor

from fitkit.geometry.camera import Camera
from fitkit.render.fragments import Fragments

INSTALL_HINT = (
    "pip install ninja && pip install --no-build-isolation "
    "git+https://github.com/NVlabs/nvdiffrast.git  (it has no wheels; it builds against the "
    "installed CUDA PyTorch, see docs/install.md)"
)


def import_nvdiffrast() -> ModuleType:
    """``nvdiffrast.torch``, or an ImportError that says how to install it."""
    try:
        import nvdiffrast.torch as dr
    except ImportError as error:
        raise ImportError(
            "The 'nvdiffrast' render backend needs nvdiffrast, which is not installed. "
            f"Install it with: {INSTALL_HINT}; or use backend='torch'."
        ) from error
    return dr


@functools.cache
def _cuda_context(device: torch.device) -> object:
    """One ``RasterizeCudaContext`` per CUDA device, created on first use."""
    return import_nvdiffrast().RasterizeCudaContext(device=device)


def opengl_projection(
    camera: Camera, image_size: tuple[int, int], near: float, far: float
) -> Tensor:
    """OpenGL projection matrices that reproduce ``camera`` on nvdiffrast's pixel grid.

    nvdiffrast's pixel ``(i, j)`` (column, row counted from the bottom) has its centre at
    ``x_ndc = (2 i + 1) / W - 1``, ``y_ndc = (2 j + 1) / H - 1``. fitkit's pixel ``(u, v)`` is
    nvdiffrast's ``(u, H - 1 - v)``, so with ``w_clip = z``::

        x_clip = 2 fx / W * x + (2 cx + 1 - W) / W * z
        y_clip = -2 fy / H * y + (H - 1 - 2 cy) / H * z
        z_clip = (far + near) / (far - near) * z - 2 far near / (far - near)

    which maps ``z = near`` to ``z_ndc = -1`` and ``z = far`` to ``+1``.

    Args:
        camera: ``B`` cameras; image_size: ``(H, W)``; near, far: clip planes (meters).
    Returns:
        ``(B, 4, 4)`` matrices ``P`` with ``clip = P @ (x, y, z, 1)``.
    """
    height, width = image_size
    fx, fy = camera.focal_length.unbind(-1)
    cx, cy = camera.principal_point.unbind(-1)
    proj = camera.focal_length.new_zeros(camera.batch_size, 4, 4)
    proj[:, 0, 0] = 2 * fx / width
    proj[:, 0, 2] = (2 * cx + 1 - width) / width
    proj[:, 1, 1] = -2 * fy / height
    proj[:, 1, 2] = (height - 1 - 2 * cy) / height
    proj[:, 2, 2] = (far + near) / (far - near)
    proj[:, 2, 3] = -2 * far * near / (far - near)
    proj[:, 3, 2] = 1
    return proj


def clip_positions(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    image_size: tuple[int, int],
    near: float,
    far: float,
    cull_backfaces: bool,
) -> tuple[Tensor, Tensor]:
    """Clip-space positions and triangles in the layout ``dr.rasterize`` takes (instanced mode).

    With ``cull_backfaces``, every triangle gets its own three corners (``3 F`` positions), and the
    corners of each back-facing triangle are moved behind the camera, where nvdiffrast clips them
    away; triangle ids are unchanged.

    Args:
        vertices: ``(B, V, 3)`` camera-frame vertices; faces: ``(F, 3)`` long.
    Returns:
        ``(B, V, 4)`` (or ``(B, 3 F, 4)``) float32 contiguous positions and ``(F, 3)`` int32
        contiguous triangles.
    """
    proj = opengl_projection(camera, image_size, near, far).to(vertices)
    homogeneous = torch.cat([vertices, torch.ones_like(vertices[..., :1])], dim=-1)
    pos = homogeneous @ proj.transpose(1, 2)
    tri = faces
    if cull_backfaces:
        x0, x1, x2 = vertices[:, faces].unbind(-2)
        back = (torch.linalg.cross(x1 - x0, x2 - x0) * x0).sum(-1) >= 0
        behind = pos.new_tensor([0.0, 0.0, 0.0, -1.0])
        pos = torch.where(back[..., None, None], behind, pos[:, faces]).flatten(1, 2)
        tri = torch.arange(3 * faces.shape[0], device=faces.device).view(-1, 3)
    return pos.float().contiguous(), tri.int().contiguous()


def fragments_from_rast(
    rast: Tensor, vertices: Tensor, faces: Tensor, image_size: tuple[int, int]
) -> Fragments:
    """Convert nvdiffrast's rasterizer output into fitkit's Fragments.

    Args:
        rast: ``(B, Hp, Wp, 4)`` ``(u, v, z / w, triangle_id + 1)``, rows bottom-up, of an image
            at least ``image_size`` (padded at the bottom and right, in fitkit's orientation).
        vertices: ``(B, V, 3)`` camera-frame vertices (for the depth); faces: ``(F, 3)`` long.
        image_size: ``(H, W)`` to keep (the top-left part of the flipped image).
    Returns:
        Fragments, rows top-down; ``bary`` and ``depth`` keep the gradients nvdiffrast gives
        ``(u, v)`` with respect to the clip-space positions.
    """
    height, width = image_size
    rast = rast.flip(1)[:, :height, :width]
    face_id = rast[..., 3].round().long() - 1
    covered = face_id >= 0
    u, v = rast[..., 0], rast[..., 1]
    bary = torch.stack([u, v, 1 - u - v], dim=-1).to(vertices.dtype) * covered[..., None]
    corner_z = vertices[..., 2].gather(1, faces[face_id.clamp(min=0)].flatten(1))
    depth = (bary * corner_z.view(bary.shape)).sum(-1)
    return Fragments(face_id=face_id, bary=bary, depth=depth)


def rasterize_with(
    dr: ModuleType,
    context: object,
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    image_size: tuple[int, int],
    near: float,
    far: float,
    cull_backfaces: bool = False,
) -> Fragments:
    """Rasterize through an nvdiffrast module and rasterizer context given by the caller.

    nvdiffrast's CUDA rasterizer takes only sizes divisible by 8: the image is rasterized padded
    at the bottom and right to the next multiples of 8 and cropped back. Arguments and result as
    in :func:`rasterize_nvdiffrast`; ``dr`` is ``nvdiffrast.torch`` there (tests pass a stand-in
    with the same conventions to check the conversions without a GPU).
    """
    if faces.shape[0] == 0 or vertices.shape[1] == 0:  # nvdiffrast needs at least one of each
        return Fragments.empty(vertices.shape[0], image_size, vertices.dtype, vertices.device)
    padded = (-(-image_size[0] // 8) * 8, -(-image_size[1] // 8) * 8)
    pos, tri = clip_positions(
        vertices, faces, camera.to(vertices.device), padded, near, far, cull_backfaces
    )
    rast, _ = dr.rasterize(context, pos, tri, padded, grad_db=False)
    return fragments_from_rast(rast, vertices, faces, image_size)


def rasterize_nvdiffrast(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    image_size: tuple[int, int],
    near: float,
    far: float,
    cull_backfaces: bool = False,
) -> Fragments:
    """Rasterize a batch of meshes with nvdiffrast's CUDA rasterizer.

    Args:
        vertices: ``(B, V, 3)`` camera-frame vertices on a CUDA device.
        faces: ``(F, 3)`` long; camera: ``B`` cameras; image_size: ``(H, W)``.
        near, far: clip planes (meters); nvdiffrast clips triangles against them.
        cull_backfaces: drop triangles whose normal ``(x1 - x0) x (x2 - x0)`` faces away.
    Returns:
        Fragments, as :func:`~fitkit.render.torch_backend.rasterize_torch` returns them.
    """
    if vertices.device.type != "cuda":
        raise ValueError(
            f"backend='nvdiffrast' needs CUDA tensors, got vertices on {vertices.device}; "
            "use backend='torch' on the CPU"
        )
    dr = import_nvdiffrast()
    context = _cuda_context(vertices.device)
    return rasterize_with(
        dr, context, vertices, faces, camera, image_size, near, far, cull_backfaces
    )
