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

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle, rot6d_to_matrix
from fitkit.io.npz import FileKeyError
from fitkit.io.runs import atomic_write, write_torch
from fitkit.io.safe_pickle import error_summary, safe_torch_load
from fitkit.priors.base import LatentPosePrior

NUM_VPOSER_JOINTS = 21
CHECKPOINT_PREFIX = "vp_model."


class _LightningCallbackKey:
    """Stand-in for a PyTorch-Lightning 1.x callback class: such checkpoints key each callback's
    state by its class (``checkpoint["callbacks"]``). Only the name is read; no code runs."""


LIGHTNING_GLOBALS: tuple[tuple[type, str], ...] = (
    (type("ModelCheckpoint", (_LightningCallbackKey,), {}),
     "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (type("EarlyStopping", (_LightningCallbackKey,), {}),
     "pytorch_lightning.callbacks.early_stopping.EarlyStopping"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),  # hyper_parameters
)
"""The non-tensor globals an official VPoser v2 snapshot (a PyTorch-Lightning 1.x ``.ckpt``) may
hold besides tensors and plain containers (``epoch``, ``global_step``, ``optimizer_states``,
``lr_schedulers``, ``pytorch-lightning_version``), each mapped to a data-only stand-in (Lightning's
``AttributeDict`` to a plain ``dict``)."""


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
        rotvec = matrix_to_axis_angle(self.model.decode(latent)).flatten(-2)
        return torch.cat([rotvec, rotvec.new_zeros(rotvec.shape[0], 6)], dim=-1)

    def latent_energy(
        self, latent: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``||z||^2``: (B, latent_dim) -> (B,)."""
        return latent.square().sum(-1)

    def energy(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``||mu||^2 + reconstruction_weight * ||decode(mu) - R||_F^2``: (B, 69) -> (B,)."""
        latent = self.encode(body_pose)
        target = axis_angle_to_matrix(body_pose[:, : NUM_VPOSER_JOINTS * 3].unflatten(-1, (-1, 3)))
        off_manifold = (self.model.decode(latent) - target).square().sum(dim=(1, 2, 3))
        return self.latent_energy(latent) + self.reconstruction_weight * off_manifold

    @classmethod
    def from_folder(cls, folder: str | Path) -> VPoserPrior:
        """Load a VPoser v2 experiment folder (``*.yaml`` + newest ``snapshots/*.ckpt``),
        tensors only (:func:`fitkit.io.safe_pickle.safe_torch_load` with
        :data:`LIGHTNING_GLOBALS`).

        Raises:
            FileNotFoundError: no yaml or no snapshot in the folder.
            UnsafePickleError: the snapshot names code (a class or function not allowed).
            FileKeyError: an unreadable yaml or snapshot, a bad ``model_params`` field, or a
                ``state_dict`` that does not match v2's keys (missing and unexpected listed) or
                the yaml's sizes.
        """
        folder = Path(folder)
        model = VPoserV2(*_model_params(folder))
        ckpt_path = newest_snapshot(folder)
        checkpoint = safe_torch_load(ckpt_path, LIGHTNING_GLOBALS)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise FileKeyError(ckpt_path, "state_dict", "missing (not a VPoser v2 snapshot)")
        # Entries outside the prefix (the trainer's body model, ...) are not VPoser's.
        state = {k.removeprefix(CHECKPOINT_PREFIX): v for k, v in checkpoint["state_dict"].items()
                 if isinstance(k, str) and k.startswith(CHECKPOINT_PREFIX)}
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise FileKeyError(
                ckpt_path, "state_dict", f"does not match VPoser v2 (keys prefixed "
                f"'{CHECKPOINT_PREFIX}'): missing {missing}, unexpected {unexpected}")
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as error:
            raise FileKeyError(ckpt_path, "state_dict", f"does not fit the sizes of the folder's "
                               f"yaml ({error_summary(error)})") from error
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


def _model_params(folder: Path) -> tuple[int, int]:
    """``num_neurons`` and ``latentD`` from the folder's yaml (``model_params``; v2's 512 and
    32 when absent)."""
    yamls = sorted(folder.glob("*.yaml"))
    if not yamls:
        raise FileNotFoundError(f"{folder}: no *.yaml experiment configuration (VPoser v2 folder)")
    try:
        config = yaml.safe_load(yamls[0].read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise FileKeyError(yamls[0], None, f"not a readable yaml ({error_summary(error)})"
                           ) from error
    if not isinstance(config, dict):
        raise FileKeyError(yamls[0], None, "expected a mapping at the top level")
    params = config.get("model_params") or {}
    if not isinstance(params, dict):
        raise FileKeyError(yamls[0], "model_params", "expected a mapping")
    sizes = []
    for key, default in (("num_neurons", 512), ("latentD", 32)):
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FileKeyError(yamls[0], f"model_params.{key}",
                               f"expected a positive integer, got {value!r}")
        sizes.append(value)
    return sizes[0], sizes[1]
