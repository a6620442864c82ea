"""The shape regularizer: squared norm of the shape coefficients."""

from __future__ import annotations

import torch


def shape_energy(betas: torch.Tensor) -> torch.Tensor:
    """L2 shape prior ``||betas||^2`` (shape components have unit variance).

    Args:
        betas: (B, K) shape coefficients.

    Returns:
        (B,) energies.
    """
    return betas.square().sum(dim=-1)


def shape_residuals(betas: torch.Tensor) -> torch.Tensor:
    """The shape prior as residuals: ``betas`` themselves (their squares sum to
    :func:`shape_energy`; Levenberg-Marquardt, :mod:`fitkit.fitting.lm`).

    Args:
        betas: (B, K) shape coefficients.

    Returns:
        (B, K) residuals.
    """
    return betas
