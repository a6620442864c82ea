"""The pose-prior interface shared by every prior."""

from __future__ import annotations

import torch
from torch import nn


class PosePrior(nn.Module):
    """A prior over SMPL body poses: a per-sample energy, low for plausible poses.

    Subclasses implement :meth:`energy`; ``prior(body_pose)`` calls it.
    """

    def energy(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Energy of each pose.

        Args:
            body_pose: (B, 69) axis-angle of SMPL joints 1–23.
            context: (B, C) conditioning vector for conditional priors, else ``None``.

        Returns:
            (B,) energies.
        """
        raise NotImplementedError

    def forward(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`energy`."""
        return self.energy(body_pose, context)

    def typical_pose(self, batch_size: int = 1,
                     context: torch.Tensor | None = None) -> torch.Tensor:
        """A pose the prior finds typical, where a fit without an initial pose starts.

        The base class returns the rest pose (zeros); priors override it (the GMM: its
        heaviest component's mean; a latent prior: the decoded zero latent).

        Args:
            batch_size: B; context: ``(B, C)`` for a conditional prior.
        Returns:
            ``(B, 69)`` axis-angle.
        """
        parameter = next(iter(self.buffers()), None)
        if parameter is None:
            parameter = next(iter(self.parameters()), None)
        like = {} if parameter is None else {"device": parameter.device}
        return torch.zeros(batch_size, 69, **like)


class LatentPosePrior(PosePrior):
    """A prior with a latent space that a fitter can optimize instead of the pose.

    ``decode(encode(body_pose))`` maps a pose onto the prior's pose manifold (exactly the identity
    for an invertible flow), and :meth:`latent_energy` is the prior's energy of a latent.
    """

    latent_dim: int

    def encode(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Latent of each pose: (B, 69) axis-angle -> (B, latent_dim)."""
        raise NotImplementedError

    def decode(self, latent: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Pose of each latent: (B, latent_dim) -> (B, 69) axis-angle."""
        raise NotImplementedError

    def latent_energy(
        self, latent: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Energy of each latent: (B, latent_dim) -> (B,)."""
        raise NotImplementedError

    def typical_pose(self, batch_size: int = 1,
                     context: torch.Tensor | None = None) -> torch.Tensor:
        """The decoded zero latent (the mode of the latent distribution): ``(B, 69)``."""
        like = next(iter(self.parameters()))
        latent = torch.zeros(batch_size, self.latent_dim, device=like.device, dtype=like.dtype)
        with torch.no_grad():
            return self.decode(latent, context)
