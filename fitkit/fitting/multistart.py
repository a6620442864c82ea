"""Fitting from scratch: several starts per sample, fitted as one batch, the lowest energy kept.

Without an initial estimate, a fit of 2D data has to guess which way the body faces: keypoints
of a person seen from the front and from behind differ only in which side is left, and an
optimizer started facing the wrong way seldom turns round. :class:`MultiStart` wraps any
:class:`~fitkit.fitting.Solver`: each sample is repeated once per start (global orientations:
facing the camera, turned away, and both profiles, :data:`ORIENTATIONS`), the whole batch of
``H x B`` rows goes to the solver at once, and each sample keeps the start whose fit has the
lowest final energy (a start whose fit is flagged ``nan`` or ``diverged`` counts only when all
are). Solvers that fit samples independently (SMPLify) give each sample exactly the result it
gets when fitted alone.

A sample's other missing initial values start where :class:`MultiStart` is told: the body pose
at the pose prior's typical pose (:meth:`fitkit.priors.PosePrior.typical_pose`: arms down,
rather than the T-pose of the rest pose), ``betas`` and ``transl`` as the solver fills them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.fitting.result import FitResult
from fitkit.fitting.settings import take_rows
from fitkit.fitting.solver import FitBatch, Solver
from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

ORIENTATIONS: dict[str, float] = {
    "facing": 0.0,
    "away": 180.0,
    "left profile": 90.0,
    "right profile": -90.0,
}
"""Start name -> the body's turn about its vertical axis (degrees) from upright facing the camera
(``global_orient = (pi, 0, 0)``); positive turns the body's left side away from the camera."""


def turned_orientations(turns: Sequence[float], dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Tensor:
    """Upright bodies facing the camera, turned about their vertical axis.

    Args:
        turns: H angles in degrees (0: facing the camera).
    Returns:
        ``(H, 3)`` axis-angle ``global_orient`` in the camera frame (y down, z forward).
    """
    upright = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64))
    angles = torch.deg2rad(torch.tensor(list(turns), dtype=torch.float64))
    yaw = torch.zeros(len(angles), 3, dtype=torch.float64)
    yaw[:, 1] = angles  # about the body's own vertical (y) axis
    rotations = upright @ axis_angle_to_matrix(yaw)
    return matrix_to_axis_angle(rotations).to(device=device, dtype=dtype)


class MultiStart:
    """A :class:`~fitkit.fitting.Solver` that fits every sample from several global
    orientations at once and keeps the best (module docstring).

    Args:
        solver: the solver that fits the expanded batch.
        turns: the starts, degrees about the vertical (default: :data:`ORIENTATIONS`).
        body_pose: ``(69,)`` axis-angle start for samples without an initial ``body_pose``, or
            ``None`` to leave it to the solver.
    Raises:
        ValueError: no starts.
    """

    def __init__(self, solver: Solver, turns: Sequence[float] | None = None,
                 body_pose: Tensor | None = None) -> None:
        self.solver = solver
        self.turns = tuple(ORIENTATIONS.values()) if turns is None else tuple(turns)
        if not self.turns:
            raise ValueError("MultiStart needs at least one start")
        self.body_pose = body_pose

    def solve(self, batch: FitBatch) -> FitResult:
        """Fit ``batch``: samples without an initial ``global_orient`` from every start, the
        others as the wrapped solver fits them. A batch with sample groups runs its starts one
        after the other (its observations may link rows, so it is not tiled); the views of a
        ``shares="all"`` group start from one world orientation, the start's turn in its
        first view.

        Returns:
            A :class:`FitResult` of B rows; ``timings["starts"]`` is the number of starts.
        """
        if "global_orient" in batch.init:
            return self.solver.solve(batch)
        if batch.groups:
            return self._solve_grouped(batch)
        count, starts = batch.batch_size, len(self.turns)
        rows = np.tile(np.arange(count), starts)  # start-major: row h * B + b
        index = torch.as_tensor(rows, device=batch.camera.device)
        init = {key: value[index] for key, value in batch.init.items()}
        like = {"device": batch.camera.device, "dtype": batch.camera.focal_length.dtype}
        orientations = turned_orientations(self.turns, **like)
        init["global_orient"] = orientations.repeat_interleave(count, dim=0)
        if "body_pose" not in init and self.body_pose is not None:
            init["body_pose"] = self.body_pose.to(**like).expand(len(rows), -1).clone()
        expanded = FitBatch(
            observations={name: take_rows(value, rows) for name, value in
                          batch.observations.items()},
            camera=batch.camera[index],
            init=init,
            images=None if batch.images is None else [batch.images[row] for row in rows],
            prior_context=take_rows(batch.prior_context, rows),
        )
        return _best_start(self.solver.solve(expanded), starts, count)

    def _solve_grouped(self, batch: FitBatch) -> FitResult:
        """The starts of a batch with groups, one solve each, the best per sample kept."""
        count, camera = batch.batch_size, batch.camera
        like = {"device": camera.device, "dtype": camera.focal_length.dtype}
        reference = torch.arange(count, device=camera.device)  # the view a start is turned in
        for group in batch.groups:
            if group.shares == "all":
                reference[list(group.indices)] = group.indices[0]
        relative = None
        if camera.has_extrinsics and camera.R is not None:  # view b's rotation from its reference
            R = camera.R.to(like["dtype"])
            relative = R @ R[reference].transpose(-1, -2)
        init = dict(batch.init)
        if "body_pose" not in init and self.body_pose is not None:
            init["body_pose"] = self.body_pose.to(**like).expand(count, -1).clone()
        results = []
        for orientation in turned_orientations(self.turns, **like):
            start = axis_angle_to_matrix(orientation).expand(count, 3, 3)
            if relative is not None:
                start = relative @ start
            init["global_orient"] = matrix_to_axis_angle(start)
            results.append(self.solver.solve(dataclasses.replace(batch, init=dict(init))))
        return _best_start(concatenate_results(results), len(self.turns), count)


def _best_start(result: FitResult, starts: int, count: int) -> FitResult:
    """Per sample, the start of the lowest energy (a failed start only when all failed) from
    a result of ``starts * count`` start-major rows."""
    energy = result.energy.reshape(starts, count)
    failed = (result.flags["nan"] | result.flags["diverged"]).reshape(starts, count)
    ranked = torch.where(failed | ~energy.isfinite(), torch.inf, energy)
    best = ranked.argmin(dim=0)
    all_failed = ~ranked.isfinite().any(dim=0)
    best = torch.where(all_failed, energy.nan_to_num(torch.inf).argmin(dim=0), best)
    chosen = best * count + torch.arange(count, device=best.device)
    picked = take_result(result, chosen)
    picked.timings["starts"] = float(starts)
    return picked


def concatenate_results(results: Sequence[FitResult]) -> FitResult:
    """The rows of several results of the same solver, one after the other."""
    first = results[0]

    def cat(values: list[Any]) -> Any:
        if isinstance(values[0], Mapping):
            return {key: cat([value[key] for value in values]) for key in values[0]}
        if isinstance(values[0], list):
            return [cat([value[i] for value in values]) for i in range(len(values[0]))]
        return torch.cat(values)

    return FitResult(
        params=cat([r.params for r in results]),
        vertices=cat([r.vertices for r in results]),
        joints=cat([r.joints for r in results]),
        energy=cat([r.energy for r in results]),
        terms=cat([r.terms for r in results]),
        stages=cat([r.stages for r in results]),
        flags=cat([r.flags for r in results]),
        timings={key: sum(r.timings.get(key, 0.0) for r in results) for key in first.timings},
        errors=[error for r in results for error in r.errors],
        faces=first.faces,
        measures=cat([r.measures for r in results]),
    )


def take_result(result: FitResult, rows: Tensor) -> FitResult:
    """The rows ``rows`` ``(N,)`` of a :class:`FitResult`, every per-sample field taken."""

    def take(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: take(item) for key, item in value.items()}
        if isinstance(value, list):
            return [take(item) for item in value]
        return value[rows.to(value.device)]

    indices = rows.tolist()
    return FitResult(
        params=take(result.params),
        vertices=take(result.vertices),
        joints=take(result.joints),
        energy=take(result.energy),
        terms=take(result.terms),
        stages=take(result.stages),
        flags=take(result.flags),
        timings=dict(result.timings),
        errors=[result.errors[i] for i in indices],
        faces=result.faces,
        measures=take(result.measures),
    )
