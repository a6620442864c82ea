"""The solver seam: a :class:`FitBatch` in, a :class:`~fitkit.fitting.FitResult` out.

``fitkit.fit`` and ``python -m fitkit.refine`` read their inputs into a :class:`FitBatch` and hand
it to a :class:`Solver`: :class:`~fitkit.fitting.SMPLify` (optimization of the data terms and
priors) or a learned optimizer (ReFit), which returns the same :class:`FitResult`, so either can
stand behind ``fit(data_term=...)`` and one result can be the ``init`` of the next solver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.fitting.result import FitResult
from fitkit.geometry import Camera
from fitkit.terms import DataTerm, TermContext, term_class

SHARES: tuple[str, ...] = ("all", "betas")
"""What the samples of a :class:`SampleGroup` share: every parameter (the views of one body) or
only ``betas`` (frames or photos of one subject)."""


@dataclass(frozen=True)
class SampleGroup:
    """Samples of a batch that share parameters.

    Attributes:
        indices: the batch rows of the group.
        shares: ``"all"`` (one body seen by several cameras: multi-view) or ``"betas"`` (one
            subject in several frames: video, several photos).
        betas: ``(10,)`` a known shape the group's ``betas`` are fixed to, or ``None``.
    """

    indices: tuple[int, ...]
    shares: str = "betas"
    betas: Tensor | None = None

    def __post_init__(self) -> None:
        if self.shares not in SHARES:
            raise ValueError(f"SampleGroup.shares must be one of {SHARES}, got {self.shares!r}")
        if not self.indices:
            raise ValueError("a SampleGroup needs at least one sample")


@dataclass
class FitBatch:
    """One batch of B samples to fit, read and on the fit's device.

    Attributes:
        observations: the data terms' observations by term name (what each term's ``read``
            returned, as tensors or dicts of tensors with B rows).
        camera: the B cameras.
        init: initial parameters (``global_orient`` (B, 3), ``body_pose`` (B, 69), ``betas``
            (B, 10), ``transl`` (B, 3)), any subset.
        images: the B images (``(H, W, 3)`` uint8 arrays) when a solver reads pixels (a learned
            optimizer, a term predicted from images), else ``None``.
        groups: samples that share parameters; empty: every sample on its own.
        prior_context: ``(B, C)`` conditioning of a conditional pose prior, or ``None``.
    """

    observations: dict[str, Any]
    camera: Camera
    init: dict[str, Tensor] = field(default_factory=dict)
    images: list[np.ndarray] | None = None
    groups: tuple[SampleGroup, ...] = ()
    prior_context: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """B."""
        return self.camera.batch_size


@runtime_checkable
class Solver(Protocol):
    """Anything that fits a :class:`FitBatch`: ``solve(batch) -> FitResult``."""

    def solve(self, batch: FitBatch) -> FitResult:
        """Fit the batch; the result holds B rows in the batch's order."""
        ...


def build_terms(
    batch: FitBatch, body: BodyModel, options: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, DataTerm]:
    """The data terms of a batch, each built by its registered class from its observations
    (:meth:`fitkit.terms.DataTerm.from_observations`).

    Args:
        batch: the batch.
        body: the body model of the fit.
        options: build options by term name (``FitConfig.term_options``).
    Raises:
        KeyError: an observation of an unregistered term.
    """
    options = options or {}
    return {
        name: term_class(name).from_observations(
            value, TermContext(body, batch.camera, batch.init, options.get(name, {}))
        )
        for name, value in batch.observations.items()
    }


def to_device(value: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Arrays and tensors (also inside dicts) on ``device``; floating values in ``dtype``."""
    if isinstance(value, Mapping):
        return {key: to_device(item, device, dtype) for key, item in value.items()}
    tensor = torch.as_tensor(value).to(device)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor
