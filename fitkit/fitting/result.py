"""What every solver returns: :class:`FitResult` and its per-sample flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

FLAG_NAMES: tuple[str, ...] = ("nan", "diverged", "no_data", "bad_input")
"""Per-sample flags of a :class:`FitResult`: the energy or gradient turned NaN/Inf, the energy
diverged, no usable observation, values that cannot be fitted (left out of the fit, the reason
in :attr:`FitResult.errors`)."""


@dataclass
class FitResult:
    """What a solver returns (:meth:`SMPLify.fit`, any :class:`~fitkit.fitting.Solver`; all
    tensors detached, batch B).

    Attributes:
        params: ``global_orient`` (B, 3), ``body_pose`` (B, 69) axis-angle, ``betas`` (B, 10),
            ``transl`` (B, 3), ``focal_length`` (B, 2), ``camera_center`` (B, 2): the layout of
            the parameter files (``docs/formats.md``).
        vertices: ``(B, V, 3)`` fitted vertices, camera frame.
        joints: ``(B, 24, 3)`` fitted SMPL joints, camera frame.
        energy: ``(B,)`` the last stage's total energy at the returned parameters.
        terms: the last stage's weighted energies by term name (data terms by their names,
            ``pose_prior``, ``shape_prior``, ``bending``, ``depth``), each ``(B,)``; they sum
            to ``energy``.
        stages: per stage, ``{"energy": (B,), "terms": {name: (B,)}}`` at its best iterate.
        flags: :data:`FLAG_NAMES`: ``nan``, ``diverged``, ``no_data``, ``bad_input``, ``(B,)``
            bool each (a flag the solver did not set is all False).
        timings: seconds per stage name and ``"total"``.
        errors: per sample, why it was flagged ``bad_input`` (``""`` when it was not); default
            all ``""``.
    Raises:
        ValueError: ``errors`` not of length B.
    """

    params: dict[str, Tensor]
    vertices: Tensor
    joints: Tensor
    energy: Tensor
    terms: dict[str, Tensor]
    stages: list[dict[str, Tensor | dict[str, Tensor]]]
    flags: dict[str, Tensor]
    timings: dict[str, float]
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = self.energy.shape[0]
        self.errors = list(self.errors) or [""] * count
        if len(self.errors) != count:
            raise ValueError(f"FitResult: {len(self.errors)} errors for {count} samples")
        missing = {name: torch.zeros(count, dtype=torch.bool, device=self.energy.device)
                   for name in FLAG_NAMES if name not in self.flags}
        self.flags = {**self.flags, **missing}

    @property
    def ok(self) -> Tensor:
        """``(B,)`` bool: samples with no flag set."""
        return ~torch.stack(list(self.flags.values())).any(dim=0)
