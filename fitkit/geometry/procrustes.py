"""Batched Procrustes alignment: the similarity (or rigid) transform that best maps one point set
onto another in the least-squares sense (Umeyama), through ``roma.rigid_points_registration``
(roma is imported on first use: importing it loads ``torch._dynamo``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ProcrustesAlignment:
    """A fitted similarity transform ``x -> scale * rotation @ x + translation`` and its result.

    Attributes:
        aligned: ``(..., N, 3)`` the source points mapped onto the target.
        rotation: ``(..., 3, 3)`` rotation matrices (det +1).
        translation: ``(..., 3)`` translations.
        scale: ``(...,)`` scale factors (ones for a rigid alignment).
    """

    aligned: Tensor
    rotation: Tensor
    translation: Tensor
    scale: Tensor

    def apply(self, points: Tensor) -> Tensor:
        """Map other points with the same transform (e.g. vertices with joints' alignment).

        Args:
            points: ``(..., M, 3)`` points in the source's frame.
        Returns:
            ``(..., M, 3)`` transformed points.
        """
        return _similarity(points, self.rotation, self.translation, self.scale)


def procrustes_align(
    source: Tensor, target: Tensor, weights: Tensor | None = None, scale: bool = True
) -> ProcrustesAlignment:
    """Align ``source`` onto ``target`` with the least-squares similarity transform.

    Minimises ``sum_n w_n |s R x_n + t - y_n|^2`` over the rotation ``R`` (a proper rotation:
    reflections are excluded), the translation ``t`` and, if ``scale``, the scale ``s``.

    Args:
        source: ``(..., N, 3)`` points to move.
        target: ``(..., N, 3)`` corresponding target points.
        weights: ``(..., N)`` non-negative per-point weights or a boolean mask; points with weight
            0 do not influence the fit (each batch element needs a positive total weight and, for
            a unique rotation, three non-collinear weighted points). Uniform if None.
        scale: estimate the scale; if False, the alignment is rigid (``s = 1``).
    Returns:
        the transform and the aligned source, see :class:`ProcrustesAlignment`.
    """
    import roma

    if weights is not None:
        weights = weights.to(source.dtype)
    if scale:
        rotation, translation, factor = roma.rigid_points_registration(
            source, target, weights=weights, compute_scaling=True
        )
    else:
        rotation, translation = roma.rigid_points_registration(source, target, weights=weights)
        factor = torch.ones_like(translation[..., 0])
    aligned = _similarity(source, rotation, translation, factor)
    return ProcrustesAlignment(aligned, rotation, translation, factor)


def _similarity(points: Tensor, rotation: Tensor, translation: Tensor, scale: Tensor) -> Tensor:
    """``scale * rotation @ p + translation`` for ``(..., M, 3)`` points."""
    rotated = torch.einsum("...ij,...mj->...mi", rotation, points)
    return scale[..., None, None] * rotated + translation[..., None, :]
