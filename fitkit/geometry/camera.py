"""Pinhole cameras of full images, in fitkit's conventions, with optional extrinsics.

Camera frame: x right, y down, z forward (meters). Pixels are ``(u, v) = (column, row)`` with the
origin at the centre of the top-left pixel, so the centre of a ``W x H`` image is
``((W - 1) / 2, (H - 1) / 2)``.

A single-view body's ``transl`` places it directly in the camera frame, and its camera has no
extrinsics. Several views of one body share a world frame: each view's camera then carries its
extrinsics ``R``, ``t`` (world -> camera, ``x_cam = R x_world + t``); :meth:`Camera.to_camera`
and :func:`points_to_views` move world points into the views' camera frames, and
:meth:`Camera.project_world` projects them. :meth:`Camera.project` always takes camera-frame
points.

The default camera of an image (:meth:`Camera.default`, :func:`default_intrinsics`): focal length
``sqrt(w^2 + h^2)`` pixels for both axes (seed 003, ReFit's full frame) and the principal point
at the image centre.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def default_focal_length(width: float | Tensor, height: float | Tensor) -> Tensor:
    """The default focal length in pixels, ``sqrt(w^2 + h^2)`` (seed 003, ReFit's full frame).

    Args:
        width, height: image size in pixels, numbers (computed in torch's default dtype) or
            tensors of one shape ``(B,)`` (floating ones computed in their dtype).
    Returns:
        ``(B,)`` or scalar tensor.
    """
    width = torch.as_tensor(width)
    if not width.is_floating_point():
        width = width.to(torch.get_default_dtype())
    height = torch.as_tensor(height, dtype=width.dtype, device=width.device)
    return torch.sqrt(width**2 + height**2)


def _default_intrinsics(image_size: Tensor) -> tuple[Tensor, Tensor]:
    """Default focal lengths and principal points of images (the module docstring's formula).

    Args:
        image_size: ``(B, 2)`` floating image sizes ``(W, H)`` in pixels.
    Returns:
        ``(B, 2)`` focal lengths ``(f, f)`` and ``(B, 2)`` principal points, in its dtype.
    """
    focal = default_focal_length(image_size[:, 0], image_size[:, 1])
    return torch.stack([focal, focal], dim=-1), (image_size - 1.0) / 2.0


def default_intrinsics(image_size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The default camera of images, for numpy callers: :meth:`Camera.default`'s formula in
    float64 numpy (correctly rounded, as ``math.sqrt``).

    Args:
        image_size: ``(N, 2)`` image sizes ``(W, H)`` in pixels.
    Returns:
        ``(N, 2)`` float64 focal lengths ``(f, f)``, ``f = sqrt(w^2 + h^2)``, and ``(N, 2)``
        float64 principal points ``((w - 1) / 2, (h - 1) / 2)``.
    Raises:
        ValueError: ``image_size`` not of shape ``(N, 2)``.
    """
    size = np.asarray(image_size, dtype=np.float64)
    if size.ndim != 2 or size.shape[-1] != 2:
        raise ValueError(f"image_size must have shape (N, 2) (W, H), got {size.shape}")
    focal = np.sqrt(np.square(size).sum(axis=-1, keepdims=True))
    return np.repeat(focal, 2, axis=-1), (size - 1.0) / 2.0


@dataclass
class Camera:
    """A batch of pinhole cameras: intrinsics and optional extrinsics.

    Attributes:
        focal_length: ``(B, 2)`` focal lengths ``(fx, fy)`` in pixels.
        principal_point: ``(B, 2)`` principal points ``(cx, cy)`` in pixels.
        image_size: ``(B, 2)`` image sizes ``(W, H)`` in pixels (float tensor).
        R: ``(B, 3, 3)`` rotations world -> camera, or ``None`` (identity).
        t: ``(B, 3)`` translations world -> camera (meters), or ``None`` (zero); a world point
            ``x`` is at ``R x + t`` in the camera frame.
    """

    focal_length: Tensor
    principal_point: Tensor
    image_size: Tensor
    R: Tensor | None = None
    t: Tensor | None = None

    def __post_init__(self) -> None:
        shapes = {
            "focal_length": (2,),
            "principal_point": (2,),
            "image_size": (2,),
            "R": (3, 3),
            "t": (3,),
        }
        batch = self.focal_length.shape[0] if self.focal_length.ndim else None
        for name, tail in shapes.items():
            value = getattr(self, name)
            if value is None:
                continue
            expected = ", ".join(["B", *map(str, tail)])
            if value.ndim != len(tail) + 1 or tuple(value.shape[1:]) != tail:
                raise ValueError(
                    f"Camera.{name} must have shape ({expected}), got {tuple(value.shape)}"
                )
            if value.shape[0] != batch:
                raise ValueError(
                    f"Camera.{name} has batch size {value.shape[0]}, focal_length has {batch}: "
                    f"Camera fields disagree on the batch size"
                )

    @classmethod
    def default(
        cls,
        image_size: Tensor | np.ndarray,
        focal_length: float | Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Camera:
        """fitkit's default cameras of images: focal length ``sqrt(w^2 + h^2)`` for both axes,
        principal point at the image centre ``((w - 1) / 2, (h - 1) / 2)``, no extrinsics.

        Args:
            image_size: ``(B, 2)`` image sizes ``(W, H)`` in pixels (tensor or array).
            focal_length: pixels, scalar, ``(B,)`` or ``(B, 2)`` instead of the default.
            device: default that of ``image_size`` (a tensor) or the CPU.
            dtype: default torch's default dtype.
        Raises:
            ValueError: ``image_size`` not of shape ``(B, 2)``.
        """
        dtype = dtype or torch.get_default_dtype()
        size = torch.as_tensor(image_size, device=device).to(dtype)
        if size.ndim != 2 or size.shape[-1] != 2:
            raise ValueError(f"image_size must have shape (B, 2) (W, H), got {tuple(size.shape)}")
        focal, center = _default_intrinsics(size)
        if focal_length is not None:
            focal = torch.as_tensor(focal_length, dtype=dtype, device=size.device)
            if focal.ndim == 1:
                focal = torch.stack([focal, focal], dim=-1)
            focal = focal.expand(size.shape[0], 2).clone()
        return cls(focal, center, size.clone())

    @classmethod
    def from_image_size(
        cls,
        width: int,
        height: int,
        batch_size: int = 1,
        focal_length: float | Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Camera:
        """A batch of identical default cameras (:meth:`default`) of a ``width x height`` image.

        Args:
            width, height: image size in pixels.
            batch_size: B.
            focal_length: pixels, scalar, ``(B,)`` or ``(B, 2)``; default ``sqrt(w^2 + h^2)``.
        """
        size = torch.tensor([[float(width), float(height)]]).expand(batch_size, 2)
        return cls.default(size, focal_length, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.focal_length.shape[0]

    @property
    def device(self) -> torch.device:
        return self.focal_length.device

    @property
    def has_extrinsics(self) -> bool:
        """Whether the cameras carry a rotation or a translation (world frame != camera frame)."""
        return self.R is not None or self.t is not None

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Camera:
        """The same cameras on another device or dtype."""
        return Camera(*(None if value is None else value.to(device=device, dtype=dtype)
                        for value in self._fields()))

    def __getitem__(self, index: int | slice | Tensor) -> Camera:
        """A sub-batch of cameras (index along B)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Camera(*(None if value is None else value[index] for value in self._fields()))

    def expand(self, batch_size: int) -> Camera:
        """The cameras for a batch of ``batch_size``: these when B is ``batch_size``, the one
        camera repeated (a view, no copy) when B is 1.

        Raises:
            ValueError: any other B.
        """
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"{self.batch_size} cameras for a batch of {batch_size}")
        return Camera(*(None if value is None else value.expand(batch_size, *value.shape[1:])
                        for value in self._fields()))

    def _fields(self) -> tuple[Tensor | None, ...]:
        return tuple(getattr(self, field.name) for field in dataclasses.fields(self))

    def to_camera(self, points: Tensor) -> Tensor:
        """World points in the camera frames: ``R x + t`` (the points themselves without
        extrinsics).

        Args:
            points: ``(B, N, 3)`` world points (B or 1 of them for B cameras).
        Returns:
            ``(B, N, 3)`` camera-frame points.
        """
        if self.R is not None:
            points = points @ self.R.transpose(-1, -2).to(points.dtype)
        if self.t is not None:
            points = points + self.t[:, None, :].to(points.dtype)
        return points

    def project(self, points: Tensor) -> Tensor:
        """Perspective projection of camera-frame points (extrinsics are not applied).

        Args:
            points: ``(B, N, 3)`` points in the camera frame (meters, z forward).
        Returns:
            ``(B, N, 2)`` pixel coordinates ``(u, v)``.
        """
        z = points[..., 2:3]
        xy = points[..., :2] / z
        return xy * self.focal_length[:, None, :] + self.principal_point[:, None, :]

    def project_world(self, points: Tensor) -> Tensor:
        """Perspective projection of world points: :meth:`project` of :meth:`to_camera`.

        Args:
            points: ``(B, N, 3)`` world points.
        Returns:
            ``(B, N, 2)`` pixel coordinates ``(u, v)``.
        """
        return self.project(self.to_camera(points))

    def unproject(self, pixels: Tensor, depth: Tensor) -> Tensor:
        """Inverse of :meth:`project` given depth.

        Args:
            pixels: ``(B, N, 2)`` pixel coordinates.
            depth: ``(B, N)`` camera-frame z.
        Returns:
            ``(B, N, 3)`` camera-frame points.
        """
        xy = (pixels - self.principal_point[:, None, :]) / self.focal_length[:, None, :]
        return torch.cat([xy * depth[..., None], depth[..., None]], dim=-1)


def points_to_views(points: Tensor, camera: Camera, group: Tensor) -> Tensor:
    """World points of G bodies in the camera frames of B views (multi-view fitting).

    View ``b`` sees body ``group[b]``: its points go through camera ``b``'s extrinsics.

    Args:
        points: ``(G, N, 3)`` world points of each body (e.g. ``BodyOutput.vertices``).
        camera: B cameras (with extrinsics, or without: then this is ``points[group]``).
        group: ``(B,)`` long, the body of each view, in ``[0, G)``.
    Returns:
        ``(B, N, 3)`` camera-frame points of each view.
    Raises:
        ValueError: ``group`` of the wrong shape.
    """
    if group.shape != (camera.batch_size,):
        raise ValueError(f"group must have shape ({camera.batch_size},) (one body per camera), "
                         f"got {tuple(group.shape)}")
    return camera.to_camera(points[group.to(points.device)])
