"""The per-pixel record a rasterizer returns and every render map reads.

Like PyTorch3D's ``Fragments``, but one layer deep (the visible surface only) and in fitkit's pixel
convention: ``[b, v, u]`` is the pixel of column ``u`` and row ``v``, whose centre sits at the
integer pixel coordinate ``(u, v)``, row 0 at the top of the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Fragments:
    """The visible surface point behind every pixel centre.

    Attributes:
        face_id: ``(B, H, W)`` long, index into the ``(F, 3)`` faces of the triangle seen at the
            pixel centre; ``-1`` where the pixel is empty. Faces are shared by the batch, so the
            index is per mesh (``0 <= face_id < F``), not into a packed ``B * F`` list.
        bary: ``(B, H, W, 3)`` barycentric weights of the visible point with respect to the three
            corners ``faces[face_id]``, in 3D (camera space): interpolating vertex attributes with
            them is perspective-correct. They sum to 1 on covered pixels and are 0 on empty ones.
        depth: ``(B, H, W)`` camera-frame ``z`` of the visible point (meters); 0 on empty pixels.
    """

    face_id: Tensor
    bary: Tensor
    depth: Tensor

    @classmethod
    def empty(
        cls,
        batch_size: int,
        image_size: tuple[int, int],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Fragments:
        """Fragments of ``batch_size`` images ``(H, W)`` in which no pixel is covered."""
        shape = (batch_size, *image_size)
        return cls(
            face_id=torch.full(shape, -1, dtype=torch.long, device=device),
            bary=torch.zeros(*shape, 3, dtype=dtype, device=device),
            depth=torch.zeros(shape, dtype=dtype, device=device),
        )

    @property
    def mask(self) -> Tensor:
        """``(B, H, W)`` bool, True where a triangle covers the pixel centre."""
        return self.face_id >= 0
