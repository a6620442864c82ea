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


class ShapePrior(torch.nn.Module):
    """:func:`shape_energy` as a module: (B, K) betas -> (B,)."""

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        """(B, K) betas -> (B,) energies."""
        return shape_energy(betas)
