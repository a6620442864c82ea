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

import functools
import math
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput
from fitkit.body.model import PARAM_SIZES
from fitkit.fitting.config import FitConfig, StageConfig, preset
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
from fitkit.fitting.solver import FitBatch, build_terms
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
    """Per-sample bookkeeping of one stage: best iterate, failure detection, freezing.

    Attributes (all ``(B,)``): ``active`` (not frozen), ``nan``, ``diverged`` (flags raised in
    this stage), ``improved`` (moved off its start), ``best_energy``; ``best_terms`` and
    ``best`` hold the energies by term and the free variables at the best iterate.
    """

    def __init__(
        self,
        active: Tensor,
        start: Tensor,
        start_terms: dict[str, Tensor],
        free: dict[str, Tensor],
        factor: float,
    ) -> None:
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
        """Record an evaluation of the free variables ``free`` (energies ``total`` (B,)); with
        ``with_grad``, check their gradients and zero those of frozen samples."""
        total = total.detach()
        finite = total.isfinite()
        if with_grad:
            for value in free.values():
                finite = finite & value.grad.isfinite().all(dim=-1)
        nan = self.active & ~finite
        diverged = self.active & finite & (total > self.limit)
        self.nan = self.nan | nan
        self.diverged = self.diverged | diverged
        self.active = self.active & ~(nan | diverged)
        better = self.active & (total < self.best_energy)
        self.improved = self.improved | better
        self.best_energy = torch.where(better, total, self.best_energy)
        for name, value in terms.items():
            self.best_terms[name] = torch.where(better, value.detach(), self.best_terms[name])
        for name, value in free.items():
            self.best[name] = torch.where(better[:, None], value.detach(), self.best[name])
            if with_grad:
                value.grad = torch.where(self.active[:, None], value.grad, 0.0)

    @torch.no_grad()
    def reset_frozen(self, free: dict[str, Tensor]) -> None:
        """Put frozen samples back on their best iterate."""
        for name, value in free.items():
            value.copy_(torch.where(self.active[:, None], value, self.best[name]))


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
    """

    EVALUATIONS = ("sparse", "full")
    SPARSE_FRACTION = 0.25
    """Above this share of the vertices (dense terms over a batch see most of the body), the
    batched full evaluation is faster than the sparse one on the CPU (bench/smplify.py)."""

    def __init__(
        self, body: BodyModel, prior: PosePrior | None = None, config: FitConfig | str = "spin",
        evaluation: str = "sparse",
    ) -> None:
        if evaluation not in self.EVALUATIONS:
            raise ValueError(f"evaluation must be one of {self.EVALUATIONS}, got {evaluation!r}")
        self.evaluation = evaluation
        if isinstance(config, str):
            config = preset(config)
        self.body = body
        self.prior = None if prior is None else prior.to(body.device, body.dtype).eval()
        self.config = config

    def fit(
        self,
        terms: DataTerm | Mapping[str, DataTerm],
        camera: Camera,
        init: Mapping[str, Tensor] | None = None,
        prior_context: Tensor | None = None,
    ) -> FitResult:
        """Fit the body to the data terms.

        Args:
            terms: the data terms (batch B), by name (a single term goes by its registered name).
            camera: the cameras of the observations (batch B).
            init: initial ``global_orient`` (B, 3), ``body_pose`` (B, 69), ``betas`` (B, 10),
                ``transl`` (B, 3), any subset. Missing ones start at an upright body facing the
                camera (``global_orient = (pi, 0, 0)``), zero pose and shape, and a translation
                estimated from the data terms (:meth:`DataTerm.estimate_transl`).
            prior_context: ``(B, C)`` conditioning for a conditional prior.
        Returns:
            A :class:`FitResult`.
        Raises:
            ValueError: batch sizes, shapes or devices that disagree.
        """
        terms = self._named_terms(terms)
        batch_size = self._check_inputs(terms, camera, init)
        camera = camera.to(dtype=self.body.dtype)
        space = pose_space(self.prior, prior_context)
        state = self._initial_state(terms, camera, init or {}, batch_size)
        anchor_z = state["transl"][:, 2].clone()
        evaluate = self._evaluator(terms)

        no_data = ~torch.stack([term.valid for term in terms.values()]).any(dim=0)
        active = ~no_data
        flags = {"nan": torch.zeros_like(no_data), "diverged": torch.zeros_like(no_data)}
        stages, timings = [], {}
        fit_start = time.perf_counter()
        for stage in self.config.stages:
            stage_start = time.perf_counter()
            tracker = self._run_stage(stage, state, space, terms, camera, anchor_z, active,
                                      evaluate)
            active = tracker.active
            flags["nan"] = flags["nan"] | tracker.nan
            flags["diverged"] = flags["diverged"] | tracker.diverged
            stages.append({"energy": tracker.best_energy, "terms": tracker.best_terms})
            self._synchronize()
            timings[stage.name] = time.perf_counter() - stage_start
        timings["total"] = time.perf_counter() - fit_start

        with torch.no_grad():
            output = self.body(**{name: state[name] for name in PARAM_SIZES})
        params = {name: state[name].detach() for name in PARAM_SIZES}
        params["focal_length"] = camera.focal_length.detach().clone()
        params["camera_center"] = camera.principal_point.detach().clone()
        flags["no_data"] = no_data
        measures = measure_plausibility(params["body_pose"], output, terms, camera)
        flags |= plausibility_flags(measures)
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
            ValueError: a batch with sample groups (shared parameters are not fitted yet), or
                inputs that disagree (see :meth:`fit`).
        """
        if batch.groups:
            raise ValueError("SMPLify does not fit sample groups (shared parameters) yet")
        camera = batch.camera.to(self.body.device, self.body.dtype)
        start = time.perf_counter()
        terms = build_terms(batch, self.body, self.config.term_options)
        built = time.perf_counter() - start
        result = self.fit(terms, camera, batch.init, batch.prior_context)
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
    ) -> _Tracker:
        """Run one stage, update ``state`` to its per-sample best iterate, return its tracker."""
        stage_terms = {
            name: term.torso() if stage.torso_only else term for name, term in terms.items()
        }
        names = [name for name in stage.optimize if name != "body_pose"]
        if "body_pose" in stage.optimize:
            names.append(space.variable)
            if space.variable not in state:
                with torch.no_grad():
                    state[space.variable] = space.encode(state["body_pose"])
        free = {name: state[name].detach().clone().requires_grad_(True) for name in names}
        if stage.optimizer == "lm":
            tracker = self._run_lm(stage, state, free, space, stage_terms, camera, anchor_z,
                                   active, evaluate)
            state.update(tracker.best)
            return tracker

        def objective() -> tuple[Tensor, dict[str, Tensor]]:
            values = {**state, **free}
            return self._energy(stage, values, space, stage_terms, camera, anchor_z, evaluate)

        with torch.no_grad():
            start, start_terms = objective()
        tracker = _Tracker(active, start, start_terms, free, self.config.divergence_factor)
        optimizer = self._optimizer(stage, list(free.values()))

        def closure() -> Tensor:
            total, energies = objective()
            loss = torch.where(tracker.active, total, 0.0).sum()
            grads = torch.autograd.grad(
                loss, list(free.values()), allow_unused=True, materialize_grads=True
            )
            for value, grad in zip(free.values(), grads, strict=True):
                value.grad = grad
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
            state["body_pose"] = torch.where(
                tracker.improved[:, None], decoded, state["body_pose"]
            )
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
            return _Tracker(active, start, start_terms, free, self.config.divergence_factor)

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
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The stage's objective: ``(B,)`` total and its ``(B,)`` weighted terms by name."""
        pose_free = "body_pose" in stage.optimize
        body_pose = space.decode(values[space.variable]) if pose_free else values["body_pose"]
        output: BodyOutput = evaluate(
            global_orient=values["global_orient"],
            body_pose=body_pose,
            betas=values["betas"],
            transl=values["transl"],
        )
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
            energies["pose_prior"] = stage.pose_prior_weight**2 * prior
        if stage.shape_prior_weight:
            energies["shape_prior"] = stage.shape_prior_weight**2 * shape_energy(values["betas"])
        if stage.bending_weight:
            energies["bending"] = stage.bending_weight**2 * bending_energy(body_pose)
        if stage.depth_weight:
            depth_error = (values["transl"][:, 2] - anchor_z).square()
            energies["depth"] = stage.depth_weight**2 * depth_error
        if not energies:  # every weight of the stage is zero: nothing to minimize
            return values["transl"].new_zeros(values["transl"].shape[0]), energies
        total = torch.stack(list(energies.values())).sum(dim=0)
        return total, energies

    def _evaluator(self, terms: dict[str, DataTerm]) -> Callable[..., BodyOutput]:
        """The body evaluation of the iteration loop (``evaluation``): for ``"sparse"``, the
        union of the vertices the terms read (all when one of them needs all)."""
        if self.evaluation == "full":
            return self.body
        needed = [term.body_vertices(self.body) for term in terms.values()]
        if any(ids is None for ids in needed):
            return self.body
        ids = torch.unique(torch.cat([ids.to(self.body.device) for ids in needed]))
        if len(ids) > self.SPARSE_FRACTION * self.body.num_vertices:
            return self.body
        return functools.partial(self.body, vertex_ids=ids)

    @staticmethod
    def _optimizer(stage: StageConfig, params: list[Tensor]) -> torch.optim.Optimizer:
        if stage.optimizer == "lbfgs":
            return torch.optim.LBFGS(
                params,
                lr=stage.lr,
                max_iter=LBFGS_STEP_ITERATIONS,
                line_search_fn="strong_wolfe",
            )
        return torch.optim.Adam(params, lr=stage.lr)

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
    ) -> dict[str, Tensor]:
        """Initial parameters (``init`` where given), with an estimated translation if needed."""
        like = {"device": self.body.device, "dtype": self.body.dtype}
        state = {
            name: torch.zeros(batch_size, size, **like) for name, size in PARAM_SIZES.items()
        }
        state["global_orient"][:, 0] = math.pi
        state.update({name: value.detach().to(**like).clone() for name, value in init.items()})
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
