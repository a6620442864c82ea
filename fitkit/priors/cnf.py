"""A conditional normalizing-flow pose prior in the style of ProHMR's.

The flow models the 6D rotations of the 23 body joints (138-d, fitkit's 6D layout: the first two
columns of each rotation matrix) with Glow-like layers — ActNorm, an LU-parameterized invertible
linear map and an additive coupling whose shift comes from a residual MLP — over a standard Normal
base. With ``context_dim > 0`` every coupling net also takes a (B, C) context vector (e.g. image
features), making the prior conditional.

The latent of a pose is exact: ``pose -> 6D -> z`` and ``z -> 6D -> Gram–Schmidt -> pose``, so
``decode(encode(pose)) == pose`` up to round-off.

Folder layout (:meth:`CNFPrior.save_folder`): ``config.json`` (``{"format": "fitkit-cnf",
"version": 1, ...constructor arguments}``) and ``weights.pt`` (a tensors-only ``state_dict``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fitkit.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
)
from fitkit.io.npz import FileKeyError
from fitkit.io.runs import atomic_write, write_torch
from fitkit.io.safe_pickle import error_summary, safe_torch_load
from fitkit.priors.base import LatentPosePrior

NUM_BODY_JOINTS = 23
POSE_6D_DIM = NUM_BODY_JOINTS * 6
CNF_FORMAT = "fitkit-cnf"
CNF_VERSION = 1


class ActNorm(nn.Module):
    """Per-feature affine map ``y = x * exp(log_scale) + shift`` (data-initialized)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the parameters so that the batch ``x`` (N, D) comes out with zero mean, unit std."""
        std = x.std(dim=0).clamp_min(1e-6)
        self.log_scale.copy_(-std.log())
        self.shift.copy_(-x.mean(dim=0) / std)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> (B, D) and log|det J| (B,)."""
        logdet = self.log_scale.sum().expand(x.shape[0])
        return x * self.log_scale.exp() + self.shift, logdet

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, D)."""
        return (y - self.shift) * torch.exp(-self.log_scale)


class LULinear(nn.Module):
    """Invertible linear map ``y = W x + b`` with ``W = L U`` (unit lower L, upper U with a
    positive diagonal ``softplus(raw) + eps``); starts at the identity."""

    eps = 1e-3

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.triangles = nn.Parameter(torch.zeros(dim, dim))  # strict lower: L, strict upper: U
        self.raw_diagonal = nn.Parameter(torch.full((dim,), math.log(math.expm1(1.0 - self.eps))))
        self.bias = nn.Parameter(torch.zeros(dim))

    def _factors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        diag = nn.functional.softplus(self.raw_diagonal) + self.eps
        eye = torch.eye(diag.shape[0], dtype=diag.dtype, device=diag.device)
        lower = self.triangles.tril(-1) + eye
        upper = self.triangles.triu(1) + torch.diag(diag)
        return lower, upper, diag

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> (B, D) and log|det J| (B,)."""
        lower, upper, diag = self._factors()
        y = x @ (lower @ upper).T + self.bias
        return y, diag.log().sum().expand(x.shape[0])

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, D) through two triangular solves."""
        lower, upper, _ = self._factors()
        rhs = (y - self.bias).T
        tmp = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, tmp, upper=True).T


class ResidualMLP(nn.Module):
    """``Linear -> num_blocks x (h + Linear(ReLU(Linear(ReLU(h))))) -> ReLU -> Linear``; the
    output layer starts at zero so a coupling starts as the identity."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, num_blocks: int) -> None:
        super().__init__()
        self.input = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, hidden))
            for _ in range(num_blocks))
        self.output = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        h = self.input(x)
        for block in self.blocks:
            h = h + block(h)
        return self.output(torch.relu(h))


class AdditiveCoupling(nn.Module):
    """``y_b = x_b + net([x_a, context])``, ``y_a = x_a`` for a fixed split of the features."""

    def __init__(self, dim: int, parity: int, hidden: int, num_blocks: int,
                 context_dim: int) -> None:
        super().__init__()
        index = torch.arange(dim)
        self.register_buffer("kept", index[index % 2 == parity], persistent=False)
        self.register_buffer("changed", index[index % 2 != parity], persistent=False)
        self.net = ResidualMLP(len(self.kept) + context_dim, len(self.changed), hidden, num_blocks)

    def _shift(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        inputs = x[:, self.kept] if context is None else torch.cat([x[:, self.kept], context], 1)
        return self.net(inputs)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) -> (B, D) and log|det J| = 0 (B,)."""
        y = x.index_add(1, self.changed, self._shift(x, context))
        return y, x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, D)."""
        return y.index_add(1, self.changed, self._shift(y, context), alpha=-1.0)


class ConditionalFlow(nn.Module):
    """Glow-like conditional flow: ``num_layers`` x (ActNorm, LULinear, AdditiveCoupling).

    Args:
        dim: feature size D.
        context_dim: C, 0 for an unconditional flow.
        num_layers: number of (ActNorm, LULinear, coupling) groups.
        hidden: width of the coupling nets.
        num_blocks: residual blocks per coupling net.
    """

    def __init__(self, dim: int, context_dim: int = 0, num_layers: int = 4, hidden: int = 128,
                 num_blocks: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.context_dim = context_dim
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            self.layers.append(ActNorm(dim))
            self.layers.append(LULinear(dim))
            self.layers.append(AdditiveCoupling(dim, i % 2, hidden, num_blocks, context_dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data -> latent: (B, D) -> z (B, D) and log|det dz/dx| (B,)."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Latent -> data: (B, D) -> (B, D)."""
        for layer in reversed(self.layers):
            z = layer.inverse(z, context)
        return z

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) under the standard Normal base: (B, D) -> (B,)."""
        z, logdet = self(x, context)
        return -0.5 * (z.square().sum(-1) + self.dim * math.log(2.0 * math.pi)) + logdet

    @torch.no_grad()
    def initialize(self, x: torch.Tensor, context: torch.Tensor | None = None) -> None:
        """Data-dependent ActNorm initialization from a batch (N, D)."""
        for layer in self.layers:
            if isinstance(layer, ActNorm):
                layer.initialize(x)
            x, _ = layer(x, context)


def body_pose_to_6d(body_pose: torch.Tensor) -> torch.Tensor:
    """(B, 69) axis-angle -> (B, 138) 6D (fitkit layout)."""
    rotmat = axis_angle_to_matrix(body_pose.unflatten(-1, (NUM_BODY_JOINTS, 3)))
    return matrix_to_rot6d(rotmat).flatten(-2)


def body_pose_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(B, 138) 6D -> (B, 69) axis-angle through Gram–Schmidt."""
    rotmat = rot6d_to_matrix(x.unflatten(-1, (NUM_BODY_JOINTS, 6)))
    return matrix_to_axis_angle(rotmat).flatten(-2)


class CNFPrior(LatentPosePrior):
    """Normalizing-flow pose prior over the 6D rotations of the 23 body joints.

    ``energy = -log_prob(body_pose, context) - energy_offset``; the latent energy is
    ``0.5 ||z||^2`` (the base density up to a constant).

    Args:
        context_dim: size of the conditioning vector, 0 for an unconditional prior.
        num_layers, hidden, num_blocks: flow size (see :class:`ConditionalFlow`).
        energy_offset: subtracted from ``-log_prob`` (e.g. the mean on training poses).
    """

    def __init__(self, context_dim: int = 0, num_layers: int = 4, hidden: int = 128,
                 num_blocks: int = 1, energy_offset: float = 0.0) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "context_dim": context_dim, "num_layers": num_layers, "hidden": hidden,
            "num_blocks": num_blocks, "energy_offset": energy_offset}
        self.flow = ConditionalFlow(POSE_6D_DIM, context_dim, num_layers, hidden, num_blocks)
        self.latent_dim = POSE_6D_DIM
        self.context_dim = context_dim
        self.energy_offset = energy_offset

    def _context(self, context: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.context_dim == 0:
            if context is not None:
                raise ValueError("this flow is unconditional (context_dim 0) but got a context")
            return None
        if context is None or context.shape != (batch, self.context_dim):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"expected a context of shape ({batch}, {self.context_dim}), "
                             f"got {got}")
        return context

    def log_prob(self, body_pose: torch.Tensor, context: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Log-density of the 6D pose: (B, 69) axis-angle -> (B,)."""
        return self.flow.log_prob(body_pose_to_6d(body_pose),
                                  self._context(context, body_pose.shape[0]))

    def energy(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """``-log_prob - energy_offset``: (B, 69) -> (B,)."""
        return -self.log_prob(body_pose, context) - self.energy_offset

    def encode(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Exact latent: (B, 69) -> (B, 138)."""
        z, _ = self.flow(body_pose_to_6d(body_pose), self._context(context, body_pose.shape[0]))
        return z

    def decode(self, latent: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 138) -> (B, 69) axis-angle (6D through Gram–Schmidt)."""
        x = self.flow.inverse(latent, self._context(context, latent.shape[0]))
        return body_pose_from_6d(x)

    def latent_energy(
        self, latent: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``0.5 ||z||^2``: (B, 138) -> (B,)."""
        return 0.5 * latent.square().sum(-1)

    def sample(self, n: int, context: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` poses (n, 69); ``context`` (n, C) for a conditional flow."""
        param = next(self.parameters())
        z = torch.randn(n, POSE_6D_DIM, generator=generator, dtype=param.dtype)
        return self.decode(z.to(param.device), context)

    def save_folder(self, folder: str | Path) -> None:
        """Write ``config.json`` and ``weights.pt`` into ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"format": CNF_FORMAT, "version": CNF_VERSION, **self.config}
        atomic_write(folder / "config.json", (json.dumps(config, indent=2) + "\n").encode())
        write_torch(folder / "weights.pt",
                    {k: v.detach().cpu().float() for k, v in self.state_dict().items()})

    @classmethod
    def from_folder(cls, folder: str | Path) -> CNFPrior:
        """Load a folder written by :meth:`save_folder` (strict keys, tensors only).

        Raises:
            FileNotFoundError: no ``config.json`` or ``weights.pt``.
            UnsafePickleError: ``weights.pt`` names code (anything but tensors and containers).
            FileKeyError: an unreadable file, a missing or malformed config field, or weights
                that do not match the config (missing and unexpected keys listed).
        """
        folder = Path(folder)
        prior = cls(**_read_config(folder / "config.json"))
        weights_path = folder / "weights.pt"
        state = safe_torch_load(weights_path)
        if not isinstance(state, dict):
            raise FileKeyError(weights_path, None,
                               f"expected a state_dict (a dict), got {type(state).__name__}")
        expected = set(prior.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(str(k) for k in set(state) - expected)
        if missing or unexpected:
            raise FileKeyError(weights_path, None, f"state_dict mismatch: missing {missing}, "
                               f"unexpected {unexpected}")
        try:
            prior.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError) as error:
            raise FileKeyError(weights_path, None, f"does not fit config.json "
                               f"({error_summary(error)})") from error
        return prior


def _read_config(path: Path) -> dict[str, Any]:
    """The constructor arguments in a cNF folder's ``config.json``, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not a fitkit cNF folder)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FileKeyError(path, None, f"not valid JSON ({error_summary(error)})") from error
    if not isinstance(config, dict):
        raise FileKeyError(path, None, f"expected a JSON object, got {type(config).__name__}")
    if config.get("format") != CNF_FORMAT:
        raise FileKeyError(path, "format", f"is {config.get('format')!r}, expected {CNF_FORMAT!r}")
    if config.get("version") != CNF_VERSION:
        raise FileKeyError(path, "version", f"is {config.get('version')!r}, this fitkit reads "
                           f"version {CNF_VERSION}")
    arguments: dict[str, Any] = {}
    for key, minimum in (("context_dim", 0), ("num_layers", 1), ("hidden", 1), ("num_blocks", 1)):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise FileKeyError(path, key, f"expected an integer >= {minimum}, got {value!r}")
        arguments[key] = value
    offset = config.get("energy_offset")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not math.isfinite(offset):
        raise FileKeyError(path, "energy_offset", f"expected a finite number, got {offset!r}")
    arguments["energy_offset"] = float(offset)
    return arguments


def is_cnf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with a fitkit cNF ``config.json``."""
    return path.is_dir() and (path / "config.json").is_file()
