"""Samples that share parameters: how a fit batch's B samples map onto free parameter rows.

A :class:`~fitkit.fitting.SampleGroup` ties samples together: ``shares="all"`` (the views of one
body: one row of every parameter), ``shares="betas"`` (frames or photos of one subject: one row
of ``betas``, the rest per sample), and optionally a known ``betas`` that stays fixed. A fitter
optimizes the rows and evaluates every sample through :meth:`GroupLayout.expand`.

Samples that share a row form one *unit* (a group; a sample in no group is a unit of its own).
Units are what the per-sample guarantees of SMPLify hold for: each unit has one energy (the sum
over its samples; a prior on a shared row counted once), its own best iterate, NaN guard and
divergence check, and units never influence each other.

With cameras that carry extrinsics the rows hold world-frame bodies; :func:`pool_rows` turns the
per-view, camera-frame initial values into them (rotation averaging in the world frame).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.body.model import PARAM_SIZES
from fitkit.fitting.solver import SampleGroup
from fitkit.geometry import Camera
from fitkit.geometry.frames import (
    average_world_params,
    camera_to_world_params,
    mean_rotations,
)
from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle


@dataclass
class GroupLayout:
    """The map from samples to parameter rows and units.

    Attributes:
        batch_size: B.
        index: per parameter name, ``(B,)`` long: the row of each sample.
        rows: per parameter name, the number of rows.
        unit: ``(B,)`` long, the unit of each sample.
        num_units: U.
        row_unit: per parameter name, ``(rows,)`` long: the unit of each row.
        share: per parameter name, ``(B,)``: 1 / the number of samples sharing the sample's row
            (a prior on a row, spread over its samples, sums to the row's value per unit).
        fixed_betas: ``(rows of betas, 10)`` known shapes, NaN where the shape is free; ``None``
            when none is fixed.
        trivial: no sharing and nothing fixed: rows are the samples (every map the identity).
        world: the batch's cameras carry extrinsics: the rows hold world-frame bodies.
    """

    batch_size: int
    index: dict[str, Tensor]
    rows: dict[str, int]
    unit: Tensor
    num_units: int
    row_unit: dict[str, Tensor]
    share: dict[str, Tensor]
    fixed_betas: Tensor | None
    trivial: bool
    world: bool = False

    @classmethod
    def build(
        cls, groups: Sequence[SampleGroup], batch_size: int,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        world: bool = False,
    ) -> GroupLayout:
        """The layout of ``groups`` over a batch of ``batch_size`` samples.

        Raises:
            ValueError: an index out of range, a sample in two groups, a known ``betas`` not of
                shape ``(10,)``.
        """
        owner = [-1] * batch_size
        for number, group in enumerate(groups):
            for index in group.indices:
                if not 0 <= index < batch_size:
                    raise ValueError(f"sample group {number}: index {index} outside the batch "
                                     f"of {batch_size}")
                if owner[index] >= 0:
                    raise ValueError(f"sample {index} is in sample groups {owner[index]} and "
                                     f"{number}; a sample belongs to one group at most")
                owner[index] = number
            if group.betas is not None:
                known = torch.as_tensor(group.betas)
                if tuple(known.shape) != (PARAM_SIZES["betas"],):
                    raise ValueError(f"sample group {number}: betas must have shape (10,), "
                                     f"got {tuple(known.shape)}")
                if not bool(known.isfinite().all()):
                    raise ValueError(f"sample group {number}: betas must be finite")

        def assign(key: list[object]) -> list[int]:
            """Row numbers: samples with the same key share a row (first seen, first row)."""
            seen: dict[object, int] = {}
            return [seen.setdefault(item, len(seen)) for item in key]

        unit = assign([("group", owner[b]) if owner[b] >= 0 else ("sample", b)
                       for b in range(batch_size)])
        body_key = [("group", owner[b]) if owner[b] >= 0 and groups[owner[b]].shares == "all"
                    else ("sample", b) for b in range(batch_size)]
        body_rows = assign(body_key)
        betas_rows = assign([("group", owner[b]) if owner[b] >= 0 else ("sample", b)
                             for b in range(batch_size)])
        long = {"dtype": torch.long, "device": device}
        index = {name: torch.tensor(betas_rows if name == "betas" else body_rows, **long)
                 for name in PARAM_SIZES}
        unit_tensor = torch.tensor(unit, **long)
        rows = {name: int(value.max()) + 1 if batch_size else 0 for name, value in index.items()}
        row_unit, share = {}, {}
        for name, value in index.items():
            first = torch.full((rows[name],), -1, **long)
            first[value.flip(0)] = unit_tensor.flip(0)  # any sample of a row: same unit
            row_unit[name] = first
            count = torch.zeros(rows[name], dtype=dtype, device=device).index_add_(
                0, value, torch.ones(batch_size, dtype=dtype, device=device))
            share[name] = 1.0 / count[value]
        fixed = None
        if any(group.betas is not None for group in groups):
            fixed = torch.full((rows["betas"], PARAM_SIZES["betas"]), torch.nan, dtype=dtype,
                               device=device)
            for group in groups:
                if group.betas is not None:
                    fixed[index["betas"][group.indices[0]]] = torch.as_tensor(
                        group.betas).to(fixed)
        trivial = fixed is None and all(n == batch_size for n in rows.values())
        return cls(batch_size, index, rows, unit_tensor, len(set(unit)), row_unit, share,
                   fixed, trivial, world)

    @staticmethod
    def key(name: str) -> str:
        """The parameter whose rows a free variable has (a pose latent: ``body_pose``'s)."""
        return name if name in PARAM_SIZES else "body_pose"

    def expand(self, name: str, rows: Tensor) -> Tensor:
        """``(rows, D)`` values of parameter ``name`` (or of a pose latent) -> ``(B, D)`` per
        sample."""
        return rows if self.trivial else rows[self.index[self.key(name)]]

    def spread(self, name: str, values: Tensor) -> Tensor:
        """``(rows,)`` energies of parameter ``name``'s rows -> ``(B,)`` per sample, each row's
        energy split evenly over the samples that share it."""
        if self.trivial:
            return values
        name = self.key(name)
        return values[self.index[name]] * self.share[name]

    def unit_sum(self, values: Tensor) -> Tensor:
        """``(B,)`` per-sample values -> ``(U,)`` sums per unit."""
        if self.trivial:
            return values
        return values.new_zeros(self.num_units).index_add_(0, self.unit, values)

    def unit_any(self, values: Tensor) -> Tensor:
        """``(B,)`` bool -> ``(U,)``: true where any sample of the unit is."""
        return self.unit_sum(values.to(torch.float32)) > 0

    def row_mask(self, name: str, unit_values: Tensor) -> Tensor:
        """``(U,)`` per-unit values -> ``(rows,)`` per row of ``name`` (or of a pose latent)."""
        return unit_values if self.trivial else unit_values[self.row_unit[self.key(name)]]

    def rows_any(self, name: str, values: Tensor) -> Tensor:
        """``(rows,)`` bool per row of ``name`` -> ``(U,)``: true where any row of the unit
        is."""
        if self.trivial:
            return values
        total = values.new_zeros(self.num_units, dtype=torch.float32)
        return total.index_add_(0, self.row_unit[self.key(name)], values.to(total)) > 0

    def sample_mask(self, unit_values: Tensor) -> Tensor:
        """``(U,)`` per-unit values -> ``(B,)`` per sample."""
        return unit_values if self.trivial else unit_values[self.unit]

    def body_any(self, values: Tensor) -> Tensor:
        """``(B,)`` bool per sample -> ``(B,)``: true where any sample showing the same body
        (the views of a ``shares="all"`` group) is."""
        if self.trivial:
            return values
        index = self.index["global_orient"]
        rows = values.new_zeros(self.rows["global_orient"], dtype=torch.float32)
        return (rows.index_add_(0, index, values.to(rows)) > 0)[index]

    def first_sample(self, name: str) -> Tensor:
        """``(rows,)`` long: the first sample of each row of ``name``."""
        first = torch.full((self.rows[name],), -1, dtype=torch.long,
                           device=self.unit.device)
        first[self.index[name].flip(0)] = torch.arange(self.batch_size - 1, -1, -1,
                                                       device=self.unit.device)
        return first


def rest_root(body: BodyModel, betas: Tensor) -> Tensor:
    """``(B, 3)`` the rest root joint ``J0`` of bodies of shape ``betas`` ``(B, 10)``, body
    frame (where SMPL's global rotation pivots)."""
    zeros = {name: betas.new_zeros(betas.shape[0], size) for name, size in PARAM_SIZES.items()
             if name != "betas"}
    with torch.no_grad():
        return body(betas=betas, vertex_ids=betas.new_zeros(0, dtype=torch.long),
                    **zeros).joints[:, 0]


def _mean_rotations(axis_angle: Tensor, index: Tensor, rows: int) -> Tensor:
    """Per-joint chordal means of ``(B, K*3)`` axis-angles over the samples of each row ->
    ``(rows, K*3)``."""
    joints = axis_angle_to_matrix(axis_angle.reshape(axis_angle.shape[0], -1, 3))
    return matrix_to_axis_angle(mean_rotations(joints, index, rows)).reshape(rows, -1)


def pool_rows(
    layout: GroupLayout, state: Mapping[str, Tensor], camera: Camera, body: BodyModel,
    given: Sequence[str] = (),
) -> dict[str, Tensor]:
    """The initial rows of the parameters from per-sample, camera-frame initial values.

    With extrinsics, each sample's root parameters go into the world frame first. Rows shared by
    several samples take the chordal mean of their rotations (per joint for ``body_pose``) and
    the mean of ``betas`` and ``transl``; a row of one sample keeps its values exactly. Where the
    orientation was not ``given`` (a default guess per view), a shared row takes its first
    sample's. Known ``betas`` replace the free ones.

    Args:
        layout: the batch's layout.
        state: ``(B, D)`` per-sample initial values by parameter name.
        camera: the batch's cameras.
        body: the body model (for the rest root joint).
        given: the parameter names the user gave.
    Returns:
        ``(rows, D)`` per parameter name.
    """
    state = dict(state)
    if layout.fixed_betas is not None:  # the known shapes place the root joint
        known = layout.expand("betas", layout.fixed_betas).to(state["betas"])
        state["betas"] = torch.where(known.isnan(), state["betas"], known)
    if camera.has_extrinsics:
        identity = torch.eye(3, dtype=state["transl"].dtype, device=state["transl"].device)
        R = identity.expand(layout.batch_size, 3, 3) if camera.R is None else camera.R
        t = torch.zeros_like(state["transl"]) if camera.t is None else camera.t
        state["global_orient"], state["transl"] = camera_to_world_params(
            state["global_orient"], state["transl"], rest_root(body, state["betas"]),
            R.to(state["transl"]), t.to(state["transl"]))
    if layout.trivial:
        return state
    rows: dict[str, Tensor] = {}
    for name, value in state.items():
        index, count = layout.index[name], layout.rows[name]
        counts = torch.bincount(index, minlength=count)
        first = value[layout.first_sample(name)]
        if name == "global_orient" and name in given:
            pooled, _ = average_world_params(value, state["transl"], index, count)
        elif name == "body_pose":
            pooled = _mean_rotations(value, index, count)
        elif name in ("betas", "transl"):
            pooled = value.new_zeros(count, value.shape[1]).index_add_(0, index, value)
            pooled = pooled / counts[:, None].to(value)
        else:
            pooled = first
        rows[name] = torch.where((counts == 1)[:, None], first, pooled)
    if layout.fixed_betas is not None:
        known = ~layout.fixed_betas.isnan().any(dim=1)
        rows["betas"] = torch.where(known[:, None], layout.fixed_betas.to(rows["betas"]),
                                    rows["betas"])
    return rows


def kept_groups(groups: Sequence[SampleGroup], rows: Sequence[int]) -> tuple[SampleGroup, ...]:
    """``groups`` over the sub-batch of ``rows`` (batch rows in order): indices renumbered,
    samples not kept dropped, groups left empty dropped."""
    position = {int(row): number for number, row in enumerate(rows)}
    kept = []
    for group in groups:
        indices = tuple(position[index] for index in group.indices if index in position)
        if indices:
            kept.append(SampleGroup(indices, group.shares, group.betas))
    return tuple(kept)
