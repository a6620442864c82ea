"""SMPLify's bending prior on elbows and knees, indexed as SPIN does."""

from __future__ import annotations

import torch

BENDING_INDICES: tuple[int, ...] = (52, 55, 9, 12)
"""Indices into the (69,) body pose: left elbow y, right elbow y, left knee x, right knee x."""

BENDING_SIGNS: tuple[float, ...] = (1.0, -1.0, -1.0, -1.0)
"""Signs ``s_i``: ``exp(s_i * theta_i)`` grows with hyper-extension of the elbows and knees;
flexion (left elbow y < 0, right elbow y > 0, knees x > 0) is cheap."""


def bending_energy(body_pose: torch.Tensor) -> torch.Tensor:
    """SMPLify's bending energy ``sum_i exp(s_i * theta_i)^2`` over elbows and knees.

    Args:
        body_pose: (B, 69) axis-angle of SMPL joints 1–23.

    Returns:
        (B,) energies (4 at zero pose).
    """
    return bending_residuals(body_pose).square().sum(dim=-1)


def bending_residuals(body_pose: torch.Tensor) -> torch.Tensor:
    """The bending energy as residuals: ``exp(s_i * theta_i)``, whose squares sum to
    :func:`bending_energy` (Levenberg-Marquardt, :mod:`fitkit.fitting.lm`).

    Args:
        body_pose: (B, 69) axis-angle of SMPL joints 1–23.

    Returns:
        (B, 4) residuals.
    """
    index = torch.tensor(BENDING_INDICES, device=body_pose.device)
    signs = torch.tensor(BENDING_SIGNS, device=body_pose.device, dtype=body_pose.dtype)
    return torch.exp(body_pose[:, index] * signs)
