"""A VPoser v2-compatible variational pose prior and its experiment-folder loader.

The module mirrors human_body_prior's VPoser v2 layer by layer, so its ``state_dict`` keys are
exactly v2's (``encoder_net.1.weight`` ... ``encoder_net.8.mu.weight``, ``decoder_net.5.bias``); a
v2 experiment folder (``NAME.yaml`` + ``snapshots/*.ckpt``, a torch checkpoint whose
``state_dict`` keys carry the prefix ``vp_model.``) loads with strict key checking.

VPoser covers SMPL joints 1–21; the two hand joints (22, 23) of the 69-d body pose stay zero when
decoding. As in SMPLify-X the prior energy is ``||z||^2`` of the latent: a fitter optimizes ``z``
and decodes it, or evaluates :meth:`VPoserPrior.energy` on the encoder mean of a pose.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import roma
import torch
import yaml
from torch import nn

from fitkit.geometry.rotations import rot6d_to_matrix
from fitkit.io.runs import atomic_write, write_torch
from fitkit.priors.base import LatentPosePrior

NUM_VPOSER_JOINTS = 21
CHECKPOINT_PREFIX = "vp_model."


class NormalDistDecoder(nn.Module):
    """Maps features to a diagonal Normal: ``Normal(mu(h), softplus(logvar(h)))``.

    The ``logvar`` name is v2's; the layer gives the scale through a softplus.
    """

    def __init__(self, num_features: int, latent_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(num_features, latent_dim)
        self.logvar = nn.Linear(num_features, latent_dim)

    def forward(self, features: torch.Tensor) -> torch.distributions.Normal:
        """(B, F) -> Normal with (B, latent_dim) loc and scale."""
        return torch.distributions.Normal(
            self.mu(features), nn.functional.softplus(self.logvar(features)))


class ContinuousRotationDecoder(nn.Module):
    """(B, J * 6) -> (B, J, 3, 3) rotation matrices via :func:`fitkit.geometry.rot6d_to_matrix`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, J * 6) -> (B, J, 3, 3)."""
        return rot6d_to_matrix(x.unflatten(-1, (-1, 6)))


class VPoserV2(nn.Module):
    """VPoser v2's network (encoder of 21 axis-angle joints, 6D decoder).

    Args:
        num_neurons: hidden width (v2: 512).
        latent_dim: latent size (v2: 32).
    """

    def __init__(self, num_neurons: int = 512, latent_dim: int = 32) -> None:
        super().__init__()
        self.num_neurons = num_neurons
        self.latent_dim = latent_dim
        n_features = NUM_VPOSER_JOINTS * 3
        self.encoder_net = nn.Sequential(
            nn.Flatten(),
            nn.BatchNorm1d(n_features),
            nn.Linear(n_features, num_neurons),
            nn.LeakyReLU(),
            nn.BatchNorm1d(num_neurons),
            nn.Dropout(0.1),
            nn.Linear(num_neurons, num_neurons),
            nn.Linear(num_neurons, num_neurons),
            NormalDistDecoder(num_neurons, latent_dim),
        )
        self.decoder_net = nn.Sequential(
            nn.Linear(latent_dim, num_neurons),
            nn.LeakyReLU(),
            nn.Dropout(0.1),
            nn.Linear(num_neurons, num_neurons),
            nn.LeakyReLU(),
            nn.Linear(num_neurons, NUM_VPOSER_JOINTS * 6),
            ContinuousRotationDecoder(),
        )

    def encode(self, pose_body: torch.Tensor) -> torch.distributions.Normal:
        """(B, 63) axis-angle of SMPL joints 1–21 -> posterior Normal over (B, latent_dim)."""
        return self.encoder_net(pose_body)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 21, 3, 3) rotation matrices."""
        return self.decoder_net(latent)


class VPoserPrior(LatentPosePrior):
    """VPoser as a latent pose prior.

    The latent energy is ``||z||^2`` (SMPLify-X: optimize ``z``, decode it, penalize ``||z||^2``).
    The energy of a pose given directly adds the distance of the pose from the decoder's manifold,

        ``E(pose) = ||mu(pose)||^2 + reconstruction_weight * ||decode(mu(pose)) - R(pose)||_F^2``

    (rotation matrices of joints 1–21), which is zero for any pose a latent fitter produces and
    keeps poses that VPoser cannot represent from scoring well merely because the encoder maps them
    near the origin.

    Always in eval mode for fitting (dropout and batch-norm statistics fixed); the training loop
    switches :attr:`model` to train mode itself.

    Args:
        model: the network; a fresh :class:`VPoserV2` when ``None``.
        reconstruction_weight: weight of the off-manifold term of :meth:`energy`.
    """

    def __init__(self, model: VPoserV2 | None = None, reconstruction_weight: float = 100.0
                 ) -> None:
        super().__init__()
        self.model = VPoserV2() if model is None else model
        self.latent_dim = self.model.latent_dim
        self.reconstruction_weight = reconstruction_weight
        self.eval()

    def encode(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Posterior mean: (B, 69) axis-angle -> (B, latent_dim) (hand joints ignored)."""
        return self.model.encode(body_pose[:, : NUM_VPOSER_JOINTS * 3]).mean

    def decode(self, latent: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, latent_dim) -> (B, 69) axis-angle, hand joints zero."""
        rotvec = roma.rotmat_to_rotvec(self.model.decode(latent)).flatten(-2)
        return torch.cat([rotvec, rotvec.new_zeros(rotvec.shape[0], 6)], dim=-1)

    def latent_energy(
        self, latent: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``||z||^2``: (B, latent_dim) -> (B,)."""
        return latent.square().sum(-1)

    def energy(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``||mu||^2 + reconstruction_weight * ||decode(mu) - R||_F^2``: (B, 69) -> (B,)."""
        latent = self.encode(body_pose)
        target = roma.rotvec_to_rotmat(body_pose[:, : NUM_VPOSER_JOINTS * 3].unflatten(-1, (-1, 3)))
        off_manifold = (self.model.decode(latent) - target).square().sum(dim=(1, 2, 3))
        return self.latent_energy(latent) + self.reconstruction_weight * off_manifold

    @classmethod
    def from_folder(cls, folder: str | Path) -> VPoserPrior:
        """Load a VPoser v2 experiment folder (``*.yaml`` + newest ``snapshots/*.ckpt``).

        Raises:
            FileNotFoundError: no yaml or no snapshot in the folder.
            KeyError: the checkpoint's keys do not match v2's (missing and unexpected listed).
        """
        folder = Path(folder)
        config = _read_config(folder)
        params = config.get("model_params") or {}
        model = VPoserV2(int(params.get("num_neurons", 512)), int(params.get("latentD", 32)))
        ckpt_path = newest_snapshot(folder)
        checkpoint = _load_checkpoint(ckpt_path)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise KeyError(f"{ckpt_path}: no 'state_dict' in the checkpoint")
        # Entries outside the prefix (the trainer's body model, ...) are not VPoser's.
        state = {k.removeprefix(CHECKPOINT_PREFIX): v for k, v in checkpoint["state_dict"].items()
                 if k.startswith(CHECKPOINT_PREFIX)}
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"{ckpt_path}: state_dict does not match VPoser v2 (keys prefixed "
                f"'{CHECKPOINT_PREFIX}'): missing {missing}, unexpected {unexpected}")
        model.load_state_dict(state, strict=True)
        return cls(model)

    def save_folder(self, folder: str | Path, name: str = "vposer", epoch: int = 0,
                    extra: dict[str, Any] | None = None) -> Path:
        """Write a v2 experiment folder: ``NAME.yaml`` and ``snapshots/NAME_epoch=EE.ckpt``.

        Args:
            folder: output folder (created).
            name: experiment id, also the file stem.
            epoch: written into the snapshot name and checkpoint.
            extra: more top-level checkpoint entries (e.g. training state).

        Returns:
            The snapshot path.
        """
        folder = Path(folder)
        (folder / "snapshots").mkdir(parents=True, exist_ok=True)
        config = {
            "general": {"expr_id": name},
            "model_params": {"num_neurons": self.model.num_neurons,
                             "latentD": self.model.latent_dim},
        }
        atomic_write(folder / f"{name}.yaml", yaml.safe_dump(config, sort_keys=False).encode())
        state = {CHECKPOINT_PREFIX + k: v.detach().cpu()
                 for k, v in self.model.state_dict().items()}
        path = folder / "snapshots" / f"{name}_epoch={epoch:02d}.ckpt"
        write_torch(path, {"epoch": epoch, "state_dict": state, **(extra or {})})
        return path


def is_vposer_folder(path: Path) -> bool:
    """Whether ``path`` looks like a v2 experiment folder (a yaml and a snapshots folder)."""
    return path.is_dir() and any(path.glob("*.yaml")) and (path / "snapshots").is_dir()


def newest_snapshot(folder: Path) -> Path:
    """The last of ``folder/snapshots/*.ckpt`` in name order (v2 names carry a padded epoch)."""
    snapshots = sorted((folder / "snapshots").glob("*.ckpt"))
    if not snapshots:
        raise FileNotFoundError(f"{folder / 'snapshots'}: no *.ckpt snapshot")
    return snapshots[-1]


def _read_config(folder: Path) -> dict[str, Any]:
    yamls = sorted(folder.glob("*.yaml"))
    if not yamls:
        raise FileNotFoundError(f"{folder}: no *.yaml experiment configuration (VPoser v2 folder)")
    config = yaml.safe_load(yamls[0].read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{yamls[0]}: expected a mapping at the top level")
    return config


def _load_checkpoint(path: Path) -> Any:
    """Load tensors only; a checkpoint that pickles other objects (e.g. training hyperparameters
    of the official release) is loaded fully, with a warning, as the user chose the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        warnings.warn(f"{path}: not a tensors-only checkpoint ({error}); loading it fully",
                      stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)
