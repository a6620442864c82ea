"""Batched SMPLify: stages of Adam, L-BFGS or Levenberg-Marquardt (:mod:`fitkit.fitting.lm`)
over body parameters, every sample independent.

Each sample of a batch has its own energy (data terms + pose prior + shape prior + bending +
depth prior, weighted per stage, :mod:`fitkit.fitting.config`). The optimizer minimizes their sum;
since no term couples samples, Adam's steps (element-wise) are exactly those of fitting every
sample alone. Per sample, the fitter also

- keeps the best iterate of each stage (lowest energy seen and the parameters that gave it) and
  hands it to the next stage and to the result;
- guards against failure: a sample whose energy or gradient turns NaN/Inf, or whose energy rises
  above ``divergence_factor * max(|start energy|, 1)``, falls back to its best iterate, is frozen
  (gradient zeroed, parameters reset after every step) for the rest of the fit, and is flagged;
- leaves samples without any usable observation at their initial parameters, flagged.

All of this is tensor arithmetic (``torch.where``) inside the iteration loop: no ``.item()``, no
Python branch on a tensor value, so on a GPU the loop never waits for the device. (torch's
L-BFGS itself reads its loss on the host for its line search and tolerances; Adam does not.)

A latent pose prior (:class:`fitkit.priors.LatentPosePrior`: VPoser, cNF) is optimized through
its latent: the stage frees ``z``, ``body_pose = decode(z)`` and the prior energy is
``latent_energy(z)``. :class:`PoseSpace` hides the difference from the fitter; results always
hold axis-angle ``body_pose``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput
from fitkit.body.model import PARAM_SIZES
from fitkit.fitting.adam import Adam
from fitkit.fitting.config import FitConfig, StageConfig, preset
from fitkit.fitting.groups import GroupLayout, pool_rows
from fitkit.fitting.lm import (
    check_residual_forms,
    has_structured_jacobian,
    levenberg_marquardt,
    stage_residuals,
    structured_jacobian,
    term_vertex_ids,
)
from fitkit.fitting.plausibility import measure_plausibility, plausibility_flags
from fitkit.fitting.result import FitResult
from fitkit.fitting.solver import FitBatch, SampleGroup, build_terms
from fitkit.geometry import Camera
from fitkit.priors import LatentPosePrior, PosePrior, bending_energy, shape_energy
from fitkit.terms import TERMS, DataTerm

LBFGS_STEP_ITERATIONS = 20
"""L-BFGS iterations per optimizer step (torch's ``max_iter``); the per-sample guard acts
between steps. (One iteration per step stalls: torch's L-BFGS then keeps retrying a failed line
search.)"""


class PoseSpace:
    """The variable a fitter optimizes for ``body_pose``: the pose itself (axis-angle), with
    ``prior.energy`` as its energy (zero without a prior).

    Args:
        prior: the pose prior, or ``None``.
        context: ``(B, C)`` conditioning for conditional priors, or ``None``.
    """

    variable = "body_pose"
    """Key of the free variable in the fitter's state."""

    def __init__(self, prior: PosePrior | None, context: Tensor | None = None) -> None:
        self.prior = prior
        self.context = context

    def encode(self, body_pose: Tensor) -> Tensor:
        """``(B, 69)`` axis-angle -> ``(B, D)`` free variable."""
        return body_pose

    def decode(self, free: Tensor) -> Tensor:
        """``(B, D)`` free variable -> ``(B, 69)`` axis-angle."""
        return free

    def pose_energy(self, body_pose: Tensor) -> Tensor:
        """``(B,)`` prior energy of a pose ``(B, 69)`` that is not being optimized."""
        if self.prior is None:
            return body_pose.new_zeros(body_pose.shape[0])
        return self.prior.energy(body_pose, self.context)

    def free_energy(self, free: Tensor, body_pose: Tensor) -> Tensor:
        """``(B,)`` prior energy while optimizing: of the free variable ``(B, D)`` and its pose
        ``(B, 69)``."""
        return self.pose_energy(body_pose)


class LatentPoseSpace(PoseSpace):
    """The latent of a :class:`LatentPosePrior`: ``body_pose = decode(z)``, energy
    ``latent_energy(z)``."""

    variable = "pose_latent"
    prior: LatentPosePrior

    def encode(self, body_pose: Tensor) -> Tensor:
        return self.prior.encode(body_pose, self.context)

    def decode(self, free: Tensor) -> Tensor:
        return self.prior.decode(free, self.context)

    def free_energy(self, free: Tensor, body_pose: Tensor) -> Tensor:
        return self.prior.latent_energy(free, self.context)


def pose_space(prior: PosePrior | None, context: Tensor | None = None) -> PoseSpace:
    """The :class:`PoseSpace` a fitter uses with ``prior``: latent for latent priors."""
    if isinstance(prior, LatentPosePrior):
        return LatentPoseSpace(prior, context)
    return PoseSpace(prior, context)


class _Tracker:
    """Per-unit bookkeeping of one stage (a unit: a sample, or a group of samples that share
    parameters, :mod:`fitkit.fitting.groups`): best iterate, failure detection, freezing.

    Attributes (all ``(U,)``): ``active`` (not frozen), ``nan``, ``diverged`` (flags raised in
    this stage), ``improved`` (moved off its start), ``best_energy``; ``best_terms`` (``(B,)``
    per sample) and ``best`` (rows of the free variables) hold the energies by term and the free
    variables at the best iterate.
    """

    def __init__(
        self,
        active: Tensor,
        start: Tensor,
        start_terms: dict[str, Tensor],
        free: dict[str, Tensor],
        factor: float,
        layout: GroupLayout,
    ) -> None:
        self.layout = layout
        self.active = active & start.isfinite()
        self.nan = active & ~start.isfinite()
        self.diverged = torch.zeros_like(active)
        self.improved = torch.zeros_like(active)
        self.limit = factor * start.abs().clamp(min=1.0)
        self.best_energy = start
        self.best_terms = dict(start_terms)
        self.best = {name: value.detach().clone() for name, value in free.items()}

    def update(
        self, total: Tensor, terms: dict[str, Tensor], free: dict[str, Tensor], with_grad: bool
    ) -> None:
        """Record an evaluation of the free variables ``free`` (energies ``total`` (U,), terms
        (B,) per sample); with ``with_grad``, check their gradients and zero those of frozen
        units."""
        layout = self.layout
        total = total.detach()
        finite = total.isfinite()
        if with_grad:
            for name, value in free.items():
                finite = finite & ~layout.rows_any(name, ~value.grad.isfinite().all(dim=-1))
        nan = self.active & ~finite
        diverged = self.active & finite & (total > self.limit)
        self.nan = self.nan | nan
        self.diverged = self.diverged | diverged
        self.active = self.active & ~(nan | diverged)
        better = self.active & (total < self.best_energy)
        self.improved = self.improved | better
        self.best_energy = torch.where(better, total, self.best_energy)
        better_samples = layout.sample_mask(better)
        for name, value in terms.items():
            self.best_terms[name] = torch.where(better_samples, value.detach(),
                                                self.best_terms[name])
        for name, value in free.items():
            better_rows = layout.row_mask(name, better)
            self.best[name] = torch.where(better_rows[:, None], value.detach(), self.best[name])
            if with_grad:
                active = layout.row_mask(name, self.active)
                value.grad = torch.where(active[:, None], value.grad, 0.0)

    @torch.no_grad()
    def reset_frozen(self, free: dict[str, Tensor]) -> None:
        """Put frozen samples back on their best iterate."""
        for name, value in free.items():
            active = self.layout.row_mask(name, self.active)
            value.copy_(torch.where(active[:, None], value, self.best[name]))


class SMPLify:
    """Batched SMPLify over a body model, a pose prior and a schedule.

    Args:
        body: the body model (its device and dtype are the fit's).
        prior: the pose prior (any :class:`PosePrior`; latent priors are optimized through their
            latent), or ``None`` for none.
        config: a :class:`FitConfig` or a preset name (``"spin"``, ``"refine"``).
        evaluation: how the body is evaluated inside the iteration loop: ``"sparse"`` (default:
            the joints and only the vertices the data terms declare,
            :meth:`fitkit.terms.DataTerm.body_vertices`, when they are at most
            :attr:`SPARSE_FRACTION` of the mesh; else every vertex) or ``"full"`` (every vertex,
            the reference the benchmarks compare with). The returned mesh is always complete;
            both give the same fit up to float rounding.
        compile: ``torch.compile`` the stage objective (the body, the terms and the priors:
            what every iteration evaluates and differentiates): ``False`` (default), ``True``
            (the default backend, inductor) or a backend name. A new fitter pays the compile
            once per stage kind on its first fit (minutes on a 2-core CPU; cached by torch
            across processes), then every fit with the same batch size and terms reuses it:
            4.5x faster per iteration on this CPU (``docs/benchmarks.md``). For long-lived
            fitters (dataset refinement, SMPLify in a training loop).
    """

    EVALUATIONS = ("sparse", "full")
    SPARSE_FRACTION = 0.6
    """Above this share of the vertices (dense terms over a batch see most of the body), the
    batched full evaluation is as fast as the sparse one on the CPU, and faster above about 0.8
    (a vertex subset costs its share of the mesh plus the gathering of its arrays;
    ``docs/benchmarks.md``)."""

    def __init__(
        self, body: BodyModel, prior: PosePrior | None = None, config: FitConfig | str = "spin",
        evaluation: str = "sparse",
        compile: bool | str = False,  # noqa: A002  (torch.compile's own name)
    ) -> None:
        if evaluation not in self.EVALUATIONS:
            raise ValueError(f"evaluation must be one of {self.EVALUATIONS}, got {evaluation!r}")
        self.evaluation = evaluation
        if isinstance(config, str):
            config = preset(config)
        self.body = body
        self.prior = None if prior is None else prior.to(body.device, body.dtype).eval()
        self.config = config
        self.compile = compile
        if compile:  # an instance attribute in front of the method: only this fitter's
            backend = "inductor" if compile is True else str(compile)
            self._energy = torch.compile(self._energy, backend=backend, dynamic=False)

    def fit(
        self,
        terms: DataTerm | Mapping[str, DataTerm],
        camera: Camera,
        init: Mapping[str, Tensor] | None = None,
        prior_context: Tensor | None = None,
        groups: Sequence[SampleGroup] = (),
    ) -> FitResult:
        """Fit the body to the data terms.

        Args:
            terms: the data terms (batch B), by name (a single term goes by its registered name).
            camera: the cameras of the observations (batch B). With extrinsics (``R``, ``t``:
                calibrated views), the body lives in the world frame: the fitted parameters,
                vertices and joints are world-frame, each view's term sees the body through its
                camera.
            init: initial ``global_orient`` (B, 3), ``body_pose`` (B, 69), ``betas`` (B, 10),
                ``transl`` (B, 3), any subset, always per sample in its camera's frame (the
                views of a group are pooled: rotation averaging in the world frame,
                :func:`fitkit.fitting.groups.pool_rows`). Missing ones start at an upright body
                facing the camera (``global_orient = (pi, 0, 0)``), zero pose and shape, and a
                translation estimated from the data terms (:meth:`DataTerm.estimate_transl`).
            prior_context: ``(B, C)`` conditioning for a conditional prior (a row shared by
                several samples takes its first sample's).
            groups: samples that share parameters (:class:`~fitkit.fitting.SampleGroup`):
                views of one body, frames of one subject, a known shape. Each group is fitted
                as one unit (one energy, best iterate, guard), independent of the others; the
                result keeps B rows, the group's total energy in each of its rows.
        Returns:
            A :class:`FitResult`.
        Raises:
            ValueError: batch sizes, shapes or devices that disagree; bad groups; a term that
                links samples of different groups.
        """
        terms = self._named_terms(terms)
        batch_size = self._check_inputs(terms, camera, init)
        camera = camera.to(dtype=self.body.dtype)
        layout = GroupLayout.build(groups, batch_size, self.body.device, self.body.dtype,
                                   world=camera.has_extrinsics)
        self._check_coupling(terms, layout)
        views = Camera(camera.focal_length, camera.principal_point, camera.image_size)
        to_views = camera.to_camera if camera.has_extrinsics else None
        context = prior_context
        if context is not None and not layout.trivial:
            context = context[layout.first_sample("body_pose")]
        space = pose_space(self.prior, context)
        state = self._initial_state(terms, views, init or {}, batch_size, layout)
        state = pool_rows(layout, state, camera, self.body, given=tuple(init or {}))
        anchor_z = state["transl"][:, 2].clone()
        evaluate = self._evaluator(terms, layout, to_views)

        no_data = ~layout.unit_any(self._has_data(terms))
        active = ~no_data
        flags = {"nan": torch.zeros_like(no_data), "diverged": torch.zeros_like(no_data)}
        stages, timings = [], {}
        fit_start = time.perf_counter()
        for stage in self.config.stages:
            stage_start = time.perf_counter()
            tracker = self._run_stage(stage, state, space, terms, views, anchor_z, active,
                                      evaluate, layout)
            active = tracker.active
            flags["nan"] = flags["nan"] | tracker.nan
            flags["diverged"] = flags["diverged"] | tracker.diverged
            stages.append({"energy": layout.sample_mask(tracker.best_energy),
                           "terms": tracker.best_terms})
            self._synchronize()
            timings[stage.name] = time.perf_counter() - stage_start
        timings["total"] = time.perf_counter() - fit_start

        params = {name: layout.expand(name, state[name]).detach() for name in PARAM_SIZES}
        with torch.no_grad():
            output = self.body(**params)
        params["focal_length"] = camera.focal_length.detach().clone()
        params["camera_center"] = camera.principal_point.detach().clone()
        flags = {name: layout.sample_mask(flag) for name, flag in flags.items()}
        flags["no_data"] = layout.sample_mask(no_data)
        seen = output if to_views is None else dataclasses.replace(
            output, vertices=to_views(output.vertices), joints=to_views(output.joints))
        measures = measure_plausibility(params["body_pose"], seen, terms, views)
        for name, flag in plausibility_flags(measures).items():
            flags[name] = layout.body_any(flag)
        return FitResult(
            params=params,
            vertices=output.vertices,
            joints=output.joints,
            energy=stages[-1]["energy"],
            terms=stages[-1]["terms"],
            stages=stages,
            flags=flags,
            timings=timings,
            faces=self.body.faces,
            measures=measures,
        )

    __call__ = fit

    def solve(self, batch: FitBatch) -> FitResult:
        """The solver seam (:class:`~fitkit.fitting.Solver`): build the batch's data terms from
        their observations (with the config's ``term_options``) and :meth:`fit` them.

        Raises:
            ValueError: inputs that disagree (see :meth:`fit`).
        """
        camera = batch.camera.to(self.body.device, self.body.dtype)
        start = time.perf_counter()
        terms = build_terms(batch, self.body, self.config.term_options)
        built = time.perf_counter() - start
        result = self.fit(terms, camera, batch.init, batch.prior_context, batch.groups)
        result.timings["data_term"] = built
        return result

    def _run_stage(
        self,
        stage: StageConfig,
        state: dict[str, Tensor],
        space: PoseSpace,
        terms: dict[str, DataTerm],
        camera: Camera,
        anchor_z: Tensor,
        active: Tensor,
        evaluate: Callable[..., BodyOutput],
        layout: GroupLayout,
    ) -> _Tracker:
        """Run one stage, update ``state`` to its per-unit best iterate, return its tracker."""
        stage_terms = {
            name: term.torso() if stage.torso_only else term for name, term in terms.items()
        }
        names = [name for name in stage.optimize if name != "body_pose"]
        if "body_pose" in stage.optimize:
            names.append(space.variable)
            if space.variable not in state:
                with torch.no_grad():
                    state[space.variable] = space.encode(state["body_pose"])
        fixed = None
        if layout.fixed_betas is not None and "betas" in names:
            fixed = ~layout.fixed_betas.isnan().any(dim=1)
            if bool(fixed.all()):  # every shape known: not a free variable
                names.remove("betas")
                fixed = None
        free = {name: state[name].detach().clone().requires_grad_(True) for name in names}
        if stage.optimizer == "lm":
            if not layout.trivial or layout.world:
                raise ValueError(
                    "optimizer 'lm' fits samples on their own: sample groups and cameras with "
                    "extrinsics need 'adam' or 'lbfgs'")
            tracker = self._run_lm(stage, state, free, space, stage_terms, camera, anchor_z,
                                   active, evaluate, layout)
            state.update(tracker.best)
            return tracker

        def objective() -> tuple[Tensor, dict[str, Tensor]]:
            values = {**state, **free}
            total, energies = self._energy(stage, values, space, stage_terms, camera, anchor_z,
                                           evaluate, layout)
            return layout.unit_sum(total), energies

        with torch.no_grad():
            start, start_terms = objective()
        tracker = _Tracker(active, start, start_terms, free, self.config.divergence_factor,
                           layout)
        optimizer = self._optimizer(stage, list(free.values()))

        def closure() -> Tensor:
            total, energies = objective()
            loss = torch.where(tracker.active, total, 0.0).sum()
            grads = torch.autograd.grad(
                loss, list(free.values()), allow_unused=True, materialize_grads=True
            )
            for value, grad in zip(free.values(), grads, strict=True):
                value.grad = grad
            if fixed is not None:  # known shapes stay put (Adam moves nothing with zero grads)
                free["betas"].grad = torch.where(fixed[:, None], 0.0, free["betas"].grad)
            tracker.update(total, energies, free, with_grad=True)
            return loss.detach()

        steps = stage.iterations
        if stage.optimizer == "lbfgs":
            steps = math.ceil(stage.iterations / LBFGS_STEP_ITERATIONS)
        for _ in range(steps):
            optimizer.step(closure)
            tracker.reset_frozen(free)
        with torch.no_grad():
            tracker.update(*objective(), free, with_grad=False)

        state.update(tracker.best)
        if space.variable in free:
            # Samples that never improved keep their pose exactly (decode(encode(pose)) need not
            # be the pose for a lossy latent such as VPoser's).
            with torch.no_grad():
                decoded = space.decode(state[space.variable])
            improved = layout.row_mask("body_pose", tracker.improved)
            state["body_pose"] = torch.where(improved[:, None], decoded, state["body_pose"])
        return tracker

    def _run_lm(
        self,
        stage: StageConfig,
        state: dict[str, Tensor],
        free: dict[str, Tensor],
        space: PoseSpace,
        terms: dict[str, DataTerm],
        camera: Camera,
        anchor_z: Tensor,
        active: Tensor,
        evaluate: Callable[..., BodyOutput],
        layout: GroupLayout,
    ) -> _Tracker:
        """One stage of per-sample Levenberg-Marquardt (:mod:`fitkit.fitting.lm`) over the
        residual forms of the stage's terms; ``free`` ends on each sample's best iterate.

        Raises:
            ValueError: a weighted term or prior without a residual form (named).
        """
        check_residual_forms(stage, terms, space.prior, self.config.term_weights)

        def residuals(values: Mapping[str, Tensor], irls: bool) -> dict[str, Tensor]:
            values = {**state, **values}
            output = evaluate(**{name: values[name] for name in PARAM_SIZES})
            return stage_residuals(stage, values, values["body_pose"], output, terms, camera,
                                   space.prior, self.config.term_weights, anchor_z, irls)

        def make_tracker(start: Tensor, start_terms: dict[str, Tensor]) -> _Tracker:
            return _Tracker(active, start, start_terms, free, self.config.divergence_factor,
                            layout)

        jacobian_at = None
        if has_structured_jacobian(terms, space.prior):
            sizes = {name: value.shape[1] for name, value in free.items()}
            vertex_ids = term_vertex_ids(self.body, terms)

            def jacobian_at(values: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
                return structured_jacobian(stage, self.body, {**state, **values}, sizes, terms,
                                           camera, space.prior, self.config.term_weights,
                                           anchor_z, vertex_ids)

        return levenberg_marquardt(residuals, free, make_tracker, stage.iterations, jacobian_at)

    def _energy(
        self,
        stage: StageConfig,
        values: dict[str, Tensor],
        space: PoseSpace,
        terms: dict[str, DataTerm],
        camera: Camera,
        anchor_z: Tensor,
        evaluate: Callable[..., BodyOutput],
        layout: GroupLayout,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The stage's objective: ``(B,)`` total and its ``(B,)`` weighted terms by name, per
        sample (``values`` hold parameter rows, :class:`GroupLayout`; a prior on a shared row
        is spread over its samples, so a unit's sum counts it once)."""
        pose_free = "body_pose" in stage.optimize
        body_pose = space.decode(values[space.variable]) if pose_free else values["body_pose"]
        output: BodyOutput = evaluate(
            global_orient=values["global_orient"],
            body_pose=body_pose,
            betas=values["betas"],
            transl=values["transl"],
        )
        spread = layout.spread
        energies: dict[str, Tensor] = {}
        for name, term in terms.items():
            weight = stage.data_weight * self.config.term_weights.get(name, 1.0)
            if weight:
                energies[name] = weight**2 * term.energy(output, camera)
        if stage.pose_prior_weight and space.prior is not None:
            if pose_free:
                prior = space.free_energy(values[space.variable], body_pose)
            else:
                prior = space.pose_energy(body_pose)
            energies["pose_prior"] = stage.pose_prior_weight**2 * spread("body_pose", prior)
        if stage.shape_prior_weight:
            energies["shape_prior"] = stage.shape_prior_weight**2 * spread(
                "betas", shape_energy(values["betas"]))
        if stage.bending_weight:
            energies["bending"] = stage.bending_weight**2 * spread(
                "body_pose", bending_energy(body_pose))
        if stage.depth_weight:
            depth_error = (values["transl"][:, 2] - anchor_z).square()
            energies["depth"] = stage.depth_weight**2 * spread("transl", depth_error)
        if not energies:  # every weight of the stage is zero: nothing to minimize
            return values["transl"].new_zeros(layout.batch_size), energies
        total = torch.stack(list(energies.values())).sum(dim=0)
        return total, energies

    def _evaluator(
        self, terms: dict[str, DataTerm], layout: GroupLayout | None = None,
        to_views: Callable[[Tensor], Tensor] | None = None,
    ) -> Callable[..., BodyOutput]:
        """The body evaluation of the iteration loop (``evaluation``): for ``"sparse"``, the
        union of the vertices the terms read (all when one of them needs all). With a
        non-trivial ``layout`` it takes parameter rows and returns every sample's body; with
        ``to_views`` (world bodies), each sample's body in its camera's frame."""
        body: Callable[..., BodyOutput] = self.body
        if self.evaluation == "sparse":
            needed = [term.body_vertices(self.body) for term in terms.values()]
            if not any(ids is None for ids in needed):
                ids = torch.unique(torch.cat([ids.to(self.body.device) for ids in needed]))
                if len(ids) <= self.SPARSE_FRACTION * self.body.num_vertices:
                    body = functools.partial(self.body, vertex_ids=ids)
        if (layout is None or layout.trivial) and to_views is None:
            return body

        def evaluate(**rows: Tensor) -> BodyOutput:
            if layout is not None:
                rows = {name: layout.expand(name, value) for name, value in rows.items()}
            output = body(**rows)
            if to_views is None:
                return output
            return dataclasses.replace(output, vertices=to_views(output.vertices),
                                       joints=to_views(output.joints))

        return evaluate

    @staticmethod
    def _optimizer(stage: StageConfig, params: list[Tensor]) -> Adam | torch.optim.Optimizer:
        if stage.optimizer == "lbfgs":
            return torch.optim.LBFGS(
                params,
                lr=stage.lr,
                max_iter=LBFGS_STEP_ITERATIONS,
                line_search_fn="strong_wolfe",
            )
        return Adam(params, lr=stage.lr)  # torch.optim's would import torch._dynamo (~2 s)

    @staticmethod
    def _has_data(terms: Mapping[str, DataTerm]) -> Tensor:
        """``(B,)`` bool: samples with a usable observation of a term that observes them (terms
        that only link samples, :attr:`DataTerm.links_samples`, do not count)."""
        observing = [term.valid for term in terms.values() if not term.links_samples]
        if not observing:
            raise ValueError("SMPLify.fit needs at least one data term that observes the "
                             f"samples (terms: {', '.join(terms)})")
        return torch.stack(observing).any(dim=0)

    @staticmethod
    def _check_coupling(terms: Mapping[str, DataTerm], layout: GroupLayout) -> None:
        """Refuse a term that links samples of different units (they would not be
        independent).

        Raises:
            ValueError: the term and a pair of linked samples in different units.
        """
        for name, term in terms.items():
            if not term.links_samples:
                continue
            first, second = term.linked_pairs()
            apart = layout.unit[first] != layout.unit[second]
            if bool(apart.any()):
                where = int(torch.nonzero(apart)[0])
                raise ValueError(
                    f"data term {name!r} links samples {int(first[where])} and "
                    f"{int(second[where])}, which are not in one sample group; put the frames "
                    "of a sequence in one SampleGroup")

    def _named_terms(self, terms: DataTerm | Mapping[str, DataTerm]) -> dict[str, DataTerm]:
        if isinstance(terms, DataTerm):
            names = [name for name, cls in TERMS.items() if type(terms) is cls]
            if not names:
                raise ValueError(
                    f"{type(terms).__name__} is not a registered data term; pass {{name: term}}"
                )
            return {names[0]: terms}
        if not terms:
            raise ValueError("SMPLify.fit needs at least one data term")
        return dict(terms)

    def _check_inputs(
        self, terms: dict[str, DataTerm], camera: Camera, init: Mapping[str, Tensor] | None
    ) -> int:
        """Check batch sizes, shapes and devices; return B."""
        sizes = {f"term {name!r}": term.batch_size for name, term in terms.items()}
        sizes["camera"] = camera.batch_size
        for name, value in (init or {}).items():
            if name not in PARAM_SIZES:
                raise ValueError(f"unknown init parameter {name!r}; expected {tuple(PARAM_SIZES)}")
            if value.ndim != 2 or value.shape[1] != PARAM_SIZES[name]:
                raise ValueError(
                    f"init {name} must have shape (B, {PARAM_SIZES[name]}), "
                    f"got {tuple(value.shape)}"
                )
            sizes[f"init {name}"] = value.shape[0]
        if len(set(sizes.values())) != 1:
            raise ValueError(f"batch sizes disagree: {sizes}")
        devices = {f"term {name!r}": term.device for name, term in terms.items()}
        devices["camera"] = camera.device
        devices.update({f"init {name}": value.device for name, value in (init or {}).items()})
        wrong = {key: str(device) for key, device in devices.items() if device != self.body.device}
        if wrong:
            raise ValueError(f"inputs not on the body model's device {self.body.device}: {wrong}")
        return camera.batch_size

    def _initial_state(
        self,
        terms: dict[str, DataTerm],
        camera: Camera,
        init: Mapping[str, Tensor],
        batch_size: int,
        layout: GroupLayout | None = None,
    ) -> dict[str, Tensor]:
        """Initial parameters per sample, camera frame (``init`` where given; known shapes of
        ``layout``), with an estimated translation if needed."""
        like = {"device": self.body.device, "dtype": self.body.dtype}
        state = {
            name: torch.zeros(batch_size, size, **like) for name, size in PARAM_SIZES.items()
        }
        state["global_orient"][:, 0] = math.pi
        state.update({name: value.detach().to(**like).clone() for name, value in init.items()})
        if layout is not None and layout.fixed_betas is not None:
            known = layout.expand("betas", layout.fixed_betas)
            state["betas"] = torch.where(known.isnan(), state["betas"], known)
        if "transl" in init:
            return state
        with torch.no_grad():
            output = self.body(**{name: state[name] for name in PARAM_SIZES if name != "transl"})
            transl, filled = None, torch.zeros(batch_size, dtype=torch.bool, device=like["device"])
            for term in terms.values():  # per sample, the first term with data for it
                estimate = term.estimate_transl(output, camera)
                if estimate is None:
                    continue
                estimate = estimate.to(**like)
                take = term.valid & ~filled if transl is not None else torch.ones_like(filled)
                transl = estimate if transl is None else torch.where(take[:, None], estimate,
                                                                     transl)
                filled = filled | term.valid
        if transl is None:
            raise ValueError(
                "no initial transl given and no data term can estimate one "
                f"(terms: {', '.join(terms)})"
            )
        state["transl"] = transl
        return state

    def _synchronize(self) -> None:
        """Wait for the device (for timings; outside the iteration loop)."""
        if self.body.device.type == "cuda":
            torch.cuda.synchronize(self.body.device)
