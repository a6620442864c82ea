"""Pinhole camera of the full image, in fitkit's conventions.

Camera frame: x right, y down, z forward (meters). The body's ``transl`` places it in this frame,
so a ``Camera`` holds intrinsics only. Pixels are ``(u, v) = (column, row)`` with the origin at the
centre of the top-left pixel, so the centre of a ``W x H`` image is ``((W - 1) / 2, (H - 1) / 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def default_focal_length(width: float | Tensor, height: float | Tensor) -> Tensor:
    """The default focal length in pixels, ``sqrt(w^2 + h^2)`` (seed 003, ReFit's full frame).

    Args:
        width, height: image size in pixels, scalars or tensors of one shape ``(B,)``.
    Returns:
        ``(B,)`` or scalar tensor.
    """
    width = torch.as_tensor(width, dtype=torch.get_default_dtype())
    height = torch.as_tensor(height, dtype=width.dtype)
    return torch.sqrt(width**2 + height**2)


@dataclass
class Camera:
    """Intrinsics of a batch of pinhole cameras.

    Attributes:
        focal_length: ``(B, 2)`` focal lengths ``(fx, fy)`` in pixels.
        principal_point: ``(B, 2)`` principal points ``(cx, cy)`` in pixels.
        image_size: ``(B, 2)`` image sizes ``(W, H)`` in pixels (float tensor).
    """

    focal_length: Tensor
    principal_point: Tensor
    image_size: Tensor

    def __post_init__(self) -> None:
        for name in ("focal_length", "principal_point", "image_size"):
            value = getattr(self, name)
            if value.ndim != 2 or value.shape[-1] != 2:
                raise ValueError(f"Camera.{name} must have shape (B, 2), got {tuple(value.shape)}")
        sizes = {
            self.focal_length.shape[0],
            self.principal_point.shape[0],
            self.image_size.shape[0],
        }
        if len(sizes) != 1:
            raise ValueError(
                "Camera fields disagree on the batch size: "
                f"focal_length {tuple(self.focal_length.shape)}, "
                f"principal_point {tuple(self.principal_point.shape)}, "
                f"image_size {tuple(self.image_size.shape)}"
            )

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
        """A batch of identical cameras centred on a ``width x height`` image.

        Args:
            width, height: image size in pixels.
            batch_size: B.
            focal_length: pixels, scalar, ``(B,)`` or ``(B, 2)``; default ``sqrt(w^2 + h^2)``.
        """
        dtype = dtype or torch.get_default_dtype()
        if focal_length is None:
            focal_length = default_focal_length(float(width), float(height))
        f = torch.as_tensor(focal_length, dtype=dtype, device=device)
        if f.ndim == 0:
            f = f.expand(batch_size)
        if f.ndim == 1:
            f = torch.stack([f, f], dim=-1)
        f = f.expand(batch_size, 2).clone()
        c = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=dtype, device=device)
        size = torch.tensor([float(width), float(height)], dtype=dtype, device=device)
        return cls(f, c.expand(batch_size, 2).clone(), size.expand(batch_size, 2).clone())

    @property
    def batch_size(self) -> int:
        return self.focal_length.shape[0]

    @property
    def device(self) -> torch.device:
        return self.focal_length.device

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Camera:
        """The same cameras on another device or dtype."""
        return Camera(
            self.focal_length.to(device=device, dtype=dtype),
            self.principal_point.to(device=device, dtype=dtype),
            self.image_size.to(device=device, dtype=dtype),
        )

    def __getitem__(self, index: int | slice | Tensor) -> Camera:
        """A sub-batch of cameras (index along B)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Camera(self.focal_length[index], self.principal_point[index], self.image_size[index])

    def project(self, points: Tensor) -> Tensor:
        """Perspective projection of camera-frame points.

        Args:
            points: ``(B, N, 3)`` points in the camera frame (meters, z forward).
        Returns:
            ``(B, N, 2)`` pixel coordinates ``(u, v)``.
        """
        z = points[..., 2:3]
        xy = points[..., :2] / z
        return xy * self.focal_length[:, None, :] + self.principal_point[:, None, :]

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
