"""Batched Procrustes alignment: the similarity (or rigid) transform that best maps one point set
onto another in the least-squares sense (Umeyama's weighted solution: the SVD of the weighted
cross-covariance with the determinant fix, :func:`fitkit.geometry.rotations.nearest_rotation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fitkit.geometry.rotations import nearest_rotation


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
    if source.dim() < 2 or source.shape[-1] != 3 or source.shape != target.shape:
        raise ValueError("source and target must have the same shape (..., N, 3), got "
                         f"{tuple(source.shape)} and {tuple(target.shape)}")
    points, targets = source, target
    if weights is None:
        weights = torch.full_like(source[..., 0], 1.0 / source.shape[-2])
    else:
        if weights.dim() == 0 or weights.shape[-1] != source.shape[-2]:
            raise ValueError(f"weights must have shape (..., N) with N = {source.shape[-2]}, "
                             f"got {tuple(weights.shape)}")
        weights = weights.to(source.dtype)
        used = weights[..., None] > 0  # points of weight 0 stay out of the sums, even non-finite
        points = torch.where(used, source, torch.zeros_like(source))
        targets = torch.where(used, target, torch.zeros_like(target))
        weights = weights / weights.sum(dim=-1, keepdim=True)
    source_mean = torch.einsum("...n,...ni->...i", weights, points)
    target_mean = torch.einsum("...n,...ni->...i", weights, targets)
    source_centred = points - source_mean[..., None, :]
    target_centred = targets - target_mean[..., None, :]
    # R maximises trace(R^T C) for the weighted cross-covariance C = sum_n w_n y_n x_n^T.
    covariance = torch.einsum("...n,...ni,...nj->...ij", weights, target_centred, source_centred)
    rotation = nearest_rotation(covariance)
    if scale:  # the least-squares s for this R: trace(R^T C) / sum_n w_n |x_n|^2
        variance = torch.einsum("...n,...ni,...ni->...", weights, source_centred, source_centred)
        factor = (rotation * covariance).sum(dim=(-2, -1)) / variance
    else:
        factor = torch.ones_like(rotation[..., 0, 0])
    translation = target_mean - factor[..., None] * torch.einsum("...ij,...j->...i", rotation,
                                                                 source_mean)
    aligned = _similarity(source, rotation, translation, factor)
    return ProcrustesAlignment(aligned, rotation, translation, factor)


def _similarity(points: Tensor, rotation: Tensor, translation: Tensor, scale: Tensor) -> Tensor:
    """``scale * rotation @ p + translation`` for ``(..., M, 3)`` points."""
    rotated = torch.einsum("...ij,...mj->...mi", rotation, points)
    return scale[..., None, None] * rotated + translation[..., None, :]
