"""The temporal smoothness term: neighbouring frames of a video move little.

It observes nothing in the images: it links each frame to the previous frame of its sequence and
scores the motion of the joints between them. Energy of sample (frame) b with previous frame p::

    E_b = sum_j |J_bj - J_pj|^2 / sigma^2

over the 24 SMPL joints (meters, in the frame the terms see), ``sigma`` the expected motion of a
joint between frames (default 0.02 m: 0.6 m/s at 30 frames per second); zero for a first frame.
Natural motion costs about one per joint, a jitter of several centimetres many times that.

The linked frames must be fitted as one unit: put a sequence's frames in one
:class:`~fitkit.fitting.SampleGroup` (``shares="betas"``, the subject's one shape), which
SMPLify checks (:attr:`~fitkit.terms.DataTerm.links_samples`).

Input: ``fit(..., temporal=previous)``, ``(B,)`` integers: the batch row of each frame's
previous frame, -1 for the first frame of a sequence (:func:`previous_frames` makes them from
sequence ids); or a dict ``{"previous": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput
from fitkit.geometry import Camera
from fitkit.io.inputs import FitInputError
from fitkit.terms.base import DataTerm, register_term

DEFAULT_SIGMA = 0.02
"""Expected motion of a joint between neighbouring frames, meters."""


def previous_frames(sequence: Sequence[int] | np.ndarray,
                    frame: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """The previous frame of each row, from sequence ids (and frame numbers).

    Args:
        sequence: ``(B,)`` the sequence of each row.
        frame: ``(B,)`` the frame number of each row within its sequence; default: rows of a
            sequence are in order.
    Returns:
        ``(B,)`` int64: the row of the frame before each one in its sequence, -1 for the first.
    Raises:
        FitInputError: arrays of different lengths, or a frame number repeated in a sequence.
    """
    sequence = np.asarray(sequence).reshape(-1)
    frame = np.arange(len(sequence)) if frame is None else np.asarray(frame).reshape(-1)
    if frame.shape != sequence.shape:
        raise FitInputError(f"sequence has {len(sequence)} rows, frame has {len(frame)}")
    previous = np.full(len(sequence), -1, dtype=np.int64)
    for value in np.unique(sequence):
        rows = np.flatnonzero(sequence == value)
        rows = rows[np.argsort(frame[rows], kind="stable")]
        if len(np.unique(frame[rows])) != len(rows):
            raise FitInputError(f"sequence {value}: a frame number appears twice")
        previous[rows[1:]] = rows[:-1]
    return previous


@register_term("temporal")
class TemporalTerm(DataTerm):
    """Joint motion between each frame and its previous frame (module docstring).

    Args:
        observations: ``{"previous": (B,) long}``, -1 for no previous frame.
        sigma: expected motion of a joint between frames, meters.
    """

    keyword = "temporal"
    links_samples = True
    batch_hint = 512  # joints and a few vertices (DataTerm.batch_hint)

    def __init__(self, observations: Mapping[str, Tensor] | Tensor,
                 sigma: float = DEFAULT_SIGMA) -> None:
        previous = observations["previous"] if isinstance(observations, Mapping) \
            else observations
        previous = torch.as_tensor(previous).long().reshape(-1)
        if not sigma > 0:
            raise ValueError(f"temporal term: sigma must be positive, got {sigma}")
        batch = previous.shape[0]
        if bool(((previous < -1) | (previous >= batch)).any()):
            raise ValueError(f"temporal term: previous rows must be -1 or in [0, {batch})")
        if bool((previous == torch.arange(batch, device=previous.device)).any()):
            raise ValueError("temporal term: a frame cannot be its own previous frame")
        self.previous = previous
        self.valid = previous >= 0
        self.sigma = float(sigma)

    @classmethod
    def read(cls, value: Any, errors: list[str] | None = None) -> dict[str, np.ndarray]:
        """``(B,)`` previous-frame rows (or ``{"previous": ...}``) as ``{"previous": int64}``.

        Raises:
            FitInputError: not a 1-D integer array.
        """
        if isinstance(value, Mapping):
            value = value.get("previous")
        array = np.asarray(value)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise FitInputError("temporal: expected (B,) integers, the row of each frame's "
                                f"previous frame (-1 for none), got {array.dtype} {array.shape}")
        return {"previous": array.astype(np.int64)}

    @classmethod
    def renumber_links(cls, observations: Any, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Previous frames renumbered into the sub-batch ``rows``; a previous frame left out
        makes its frame a first frame (-1)."""
        previous = np.asarray(observations["previous"], dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        position = np.full(int(max(rows.max(initial=-1), previous.max(initial=-1))) + 2, -1,
                           dtype=np.int64)
        position[rows] = np.arange(len(rows))
        return {**observations, "previous": np.where(previous >= 0, position[previous], -1)}

    def linked_pairs(self) -> tuple[Tensor, Tensor]:
        rows = torch.nonzero(self.valid).squeeze(1)
        return rows, self.previous[rows]

    def body_vertices(self, body: BodyModel) -> Tensor:
        return torch.zeros(0, dtype=torch.long)

    def energy(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        joints = body_output.joints
        previous = joints[self.previous.clamp(min=0).to(joints.device)]
        motion = (joints - previous).square().sum(dim=(-1, -2)) / self.sigma**2
        return torch.where(self.valid.to(joints.device), motion, 0.0)
