"""``Fitter``: a body model, a pose prior, data terms, a schedule and a solver, ready to fit
many batches (``fitkit.fit`` holds one per call; ``python -m fitkit.refine`` one per run).

A batch comes in as read inputs (:mod:`fitkit.io.inputs`), keyed by each data term's ``fit``
keyword (:data:`fitkit.terms.TERMS`: ``keypoints=``, ``iuv=``, ``displacements=``,
``keypoints3d=``, or a user's term's own keyword), becomes a :class:`~fitkit.fitting.FitBatch`
and goes to the solver (SMPLify by default), which returns a :class:`~fitkit.fitting.FitResult`.
The one data term that can also come from the images is ``flow``: without ``displacements`` the
fitter predicts them with a displacement network (:class:`~fitkit.nets.predict.FlowPredictor`).

The settings behind it (presets with overrides, term names, priors and devices by name, default
cameras, the per-sample checks of a batch's values) are in :mod:`fitkit.fitting.settings` and
re-exported here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput, load_body
from fitkit.fitting import FitBatch, FitResult, SampleGroup, SMPLify, Solver, to_device
from fitkit.fitting.groups import kept_groups
from fitkit.fitting.multistart import MultiStart
from fitkit.fitting.refit_solver import ReFitSolver
from fitkit.fitting.settings import (
    FIT_SETTINGS,
    STAGE_SETTINGS,
    fit_config,
    make_camera,
    resolve_device,
    resolve_prior,
    sample_problems,
    take_rows,
    term_names,
)
from fitkit.geometry import Camera
from fitkit.io.inputs import FitInputError
from fitkit.io.params import PARAM_SIZES
from fitkit.nets import CheckpointError, FlowNet
from fitkit.nets.predict import TEXTURE_MODES, FlowPredictor
from fitkit.priors import PosePrior
from fitkit.terms import term_class, term_keywords

__all__ = [
    "FIT_SETTINGS",
    "PREDICTED_TERMS",
    "STAGE_SETTINGS",
    "Fitter",
    "fit_config",
    "make_camera",
    "resolve_device",
    "resolve_prior",
    "term_names",
]

PREDICTED_TERMS: tuple[str, ...] = ("flow",)
"""Data terms the fitter can predict from the images when their input is not given."""

LEARNED_SOLVERS: tuple[str, ...] = ("refit",)
"""``data_term`` names that select a learned optimizer reading the images (ReFit,
:class:`~fitkit.fitting.refit_solver.ReFitSolver`) instead of data terms; keypoints, when given,
place its crop and score its result."""


def learned_solver(data_term: str | Sequence[str]) -> str | None:
    """The learned optimizer ``data_term`` names (``"refit"`` or ``["refit"]``), else ``None``."""
    names = [data_term] if isinstance(data_term, str) else list(data_term)
    return names[0] if len(names) == 1 and names[0] in LEARNED_SOLVERS else None


class Fitter:
    """Body model, pose prior, data terms, schedule and solver, ready to fit batches.

    Args:
        data_term: a registered data term's name (``"keypoints"``, ``"densepose"``,
            ``"flow"``, ``"keypoints3d"``, a user's own), several as a list or a
            comma-separated string (their energies add up); or ``"refit"``, the learned
            optimizer (:data:`LEARNED_SOLVERS`: reads the images; keypoints optional).
        prior: ``"gmm"``, ``"vposer"``, ``"cnf"`` (fitkit's open defaults), a path of a prior
            file or folder, a :class:`PosePrior`, or ``None``.
        body: ``"open"``, a body model file or folder (:func:`fitkit.load_body`), or a
            :class:`BodyModel`.
        device: where to fit; default CUDA when available, else the CPU.
        flow_net: for ``"flow"`` from images: the displacement network: ``"auto"`` (the
            shipped ``"open"`` network, with texture input, when a texture is given, else
            ``"open-notexture"``), a shipped name, a checkpoint path or a :class:`FlowNet`;
            loaded on first use.
        flow_rounds: for ``"flow"`` from images: predict and fit this many times, each round
            predicting from the previous round's fit (1: predict once, from the initial bodies).
        solver: the :class:`~fitkit.fitting.Solver`; default SMPLify over the body, the prior
            and the schedule (for ``data_term="refit"``: :class:`ReFitSolver`).
        refit_net: for ``"refit"``: ``"auto"`` (the shipped open network), a checkpoint path
            or a :class:`~fitkit.nets.refit.ReFit`.
        refit_iterations: for ``"refit"``: T, feedback-update steps (default the network's).
        compile: ``torch.compile`` SMPLify's objective (:class:`~fitkit.fitting.SMPLify`):
            ``False``, ``True`` or a backend name; pays off over many batches of one size.
        config: ``preset`` (name or :class:`FitConfig`; default ``"refine"`` for samples with
            an initial ``global_orient`` and ``"scratch"`` with several starts for the others,
            :attr:`scratch_solver`) and overrides (:func:`fit_config`).
    Raises:
        FitInputError: unknown data term, prior, preset or setting.
    """

    def __init__(
        self,
        data_term: str | Sequence[str] = "keypoints",
        prior: str | os.PathLike | PosePrior | None = "gmm",
        body: str | os.PathLike | BodyModel = "open",
        device: torch.device | str | None = None,
        flow_net: str | os.PathLike | FlowNet = "auto",
        flow_rounds: int = 1,
        solver: Solver | None = None,
        refit_net: Any = "auto",
        refit_iterations: int | None = None,
        compile: bool | str = False,  # noqa: A002  (torch.compile's own name)
        **config: Any,
    ) -> None:
        if flow_rounds < 1:
            raise FitInputError(f"flow_rounds must be at least 1, got {flow_rounds}")
        self.learned = learned_solver(data_term)
        self.terms = () if self.learned else term_names(data_term)
        self.optional: tuple[str, ...] = ("keypoints",) if self.learned else ()
        self.preset = config.pop("preset", None)
        self.overrides = dict(config)
        self.config = fit_config(self.preset or "refine", **config)
        self.device = resolve_device(device)
        if isinstance(body, BodyModel):
            self.body = body.to(self.device)
        else:
            self.body = load_body(body, device=self.device)
        self.prior = resolve_prior(prior)
        if self.learned and solver is None:
            try:
                solver = ReFitSolver(self.body, refit_net, refit_iterations)
            except (FileNotFoundError, CheckpointError, ValueError) as error:
                raise FitInputError(f"refit_net: {error}") from None
        self.compile = compile
        self.solver: Solver = solver or SMPLify(self.body, self.prior, self.config,
                                                compile=compile)
        self._scratch: Solver | None = solver
        self.flow_net = flow_net
        self.flow_rounds = flow_rounds
        self._predictors: dict[str, FlowPredictor] = {}

    @property
    def scratch_solver(self) -> Solver:
        """The solver of samples without an initial ``global_orient`` (fits from scratch):
        SMPLify with the ``"scratch"`` preset (or the preset given) from several global
        orientations, starting at the prior's typical pose (:class:`MultiStart`); a solver given
        to the fitter fits them itself.

        Raises:
            FitInputError: the overrides do not fit the scratch preset (e.g. a per-stage list of
                another length).
        """
        if self._scratch is None:
            config = fit_config(self.preset or "scratch", **self.overrides)
            typical = self.prior.typical_pose()[0] if self.prior is not None else None
            self._scratch = MultiStart(SMPLify(self.body, self.prior, config,
                                               compile=self.compile), body_pose=typical)
        return self._scratch

    @property
    def keywords(self) -> dict[str, str]:
        """``{term name: fit keyword}`` of the fitter's data terms."""
        keywords = term_keywords()
        return {name: keywords[name] for name in (*self.terms, *self.optional)}

    def predictor(self, texture: str | Tensor | None = None) -> FlowPredictor:
        """The displacement network behind ``"flow"`` from images (loaded on first use): the
        fitter's ``flow_net``, or for ``"auto"`` the shipped ``"open"`` network when a texture
        (or a texture mode) is given and ``"open-notexture"`` when ``texture`` is ``None``.

        Raises:
            FitInputError: a missing or unreadable checkpoint (named).
        """
        net = self.flow_net
        if isinstance(net, str) and net == "auto":
            net = "open-notexture" if texture is None else "open"
        key = str(id(net)) if isinstance(net, FlowNet) else str(net)
        if key not in self._predictors:
            try:
                self._predictors[key] = FlowPredictor(net, self.body)
            except (FileNotFoundError, CheckpointError, ValueError) as error:
                raise FitInputError(f"flow_net: {error}") from None
        return self._predictors[key]

    def predict_flow(
        self,
        images: Sequence[np.ndarray],
        camera: Camera,
        init: Mapping[str, Tensor],
        texture: str | Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-vertex flow targets predicted by the displacement network (:meth:`predictor`).

        Images of different sizes are predicted size by size (``"other"`` then takes the next
        image of the same size).

        Args:
            images: B ``(H, W, 3)`` uint8 RGB images.
            camera: their B cameras (on the fitter's device).
            init: the initial parameters (all of ``global_orient``, ``body_pose``, ``betas``,
                ``transl``), ``(B, ...)`` tensors on the device.
            texture: ``None`` (none known: a network with texture input then estimates it),
                ``"estimate"`` (from each image alone), ``"other"`` (the next image's estimate,
                an ablation) or a ``(B, 3, T, T)`` / ``(3, T, T)`` texture in [0, 1].
        Returns:
            ``{"targets": (B, V, 2), "visible": (B, V)}``, the flow term's per-vertex form.
        Raises:
            FitInputError: missing initial parameters, a bad texture or checkpoint.
        """
        missing = [key for key in PARAM_SIZES if key not in init]
        if missing:
            raise FitInputError("data_term='flow' from images needs initial parameters to "
                                f"render (init=...; missing {', '.join(missing)})")
        if isinstance(texture, str) and texture not in TEXTURE_MODES or not (
                texture is None or isinstance(texture, str | Tensor)):
            raise FitInputError(f"unknown texture {texture!r}; give one of "
                                f"{', '.join(TEXTURE_MODES)} or a (B, 3, T, T) tensor")
        predictor = self.predictor(texture)
        if texture is None:
            texture = "estimate"
        with torch.no_grad():
            output = self.body(**{key: init[key] for key in PARAM_SIZES})
        batch, count = output.vertices.shape[:2]
        targets = output.vertices.new_zeros(batch, count, 2)
        visible = torch.zeros(batch, count, dtype=torch.bool, device=self.device)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        for indices in groups.values():  # one prediction per image size
            rows = torch.tensor(indices, device=self.device)
            pixels = torch.as_tensor(np.stack([images[i] for i in indices]))
            pixels = pixels.to(self.device, self.body.dtype).permute(0, 3, 1, 2) / 255.0
            part = BodyOutput(output.vertices[rows], output.joints[rows], output.selector)
            source = texture
            if isinstance(texture, Tensor) and texture.ndim == 4:
                source = texture[rows.to(texture.device)]
            try:
                prediction = predictor(pixels, part, camera[rows], source)
            except ValueError as error:
                raise FitInputError(f"flow prediction: {error}") from None
            targets[rows], visible[rows] = prediction.targets, prediction.visible
        return {"targets": targets, "visible": visible}

    def fit(
        self,
        sizes: np.ndarray,
        init: Mapping[str, np.ndarray] | None = None,
        camera: Camera | None = None,
        **inputs: Any,
    ) -> FitResult:
        """Fit a batch of read inputs.

        A sample whose values cannot be fitted (:func:`sample_problems`: non-finite initial
        parameters or camera, a body at or behind the camera, a focal length <= 0, an image size
        other than the given camera's) is left out of the fit: it keeps its initial values (NaN
        for parameters the init lacks), its energies are NaN, it is flagged ``bad_input`` with
        its message in ``errors``, and the other samples are fitted exactly as they would be
        without it.

        Args:
            sizes: ``(B, 2)`` image sizes ``(W, H)``.
            init: initial parameters ``(B, ...)`` (:func:`fitkit.io.inputs.read_init`), any
                subset.
            camera: B cameras, or ``None`` for :func:`make_camera`.
            inputs: each data term's input by its keyword, as its ``read`` returns it
                (``keypoints`` ``(B, 25, 3)``, ``iuv`` ``(B, H, W, 3)`` uint8,
                ``displacements``, ...); for ``"flow"``, ``images`` (B ``(H, W, 3)`` uint8
                arrays) instead of ``displacements`` predicts them with the displacement
                network, with ``texture`` (see :meth:`predict_flow`) and optionally ``usable``
                ``(B,)`` bool (samples without a usable image get no targets and are flagged
                ``no_data``); ``prior_context`` ``(B, C)`` conditions a conditional prior;
                ``groups``, samples that share parameters (:class:`~fitkit.fitting.SampleGroup`;
                a sample left out of the fit leaves its group).
        Raises:
            FitInputError: a missing input or batch sizes that disagree.
        """
        images = inputs.pop("images", None)
        texture = inputs.pop("texture", None)
        usable = inputs.pop("usable", None)
        prior_context = inputs.pop("prior_context", None)
        groups = tuple(inputs.pop("groups", None) or ())
        keywords = self.keywords
        unknown = sorted(set(inputs) - set(keywords.values()))
        if unknown:
            raise FitInputError(f"inputs {unknown} belong to no data term of this fit "
                                f"({', '.join(f'{n}: {k}=' for n, k in keywords.items())})")
        predicted = [name for name, keyword in keywords.items() if name in PREDICTED_TERMS
                     and inputs.get(keyword) is None and images is not None]
        for name, keyword in keywords.items():
            if name not in (*predicted, *self.optional) and inputs.get(keyword) is None:
                raise FitInputError(f"data_term={name!r} needs {keyword}=...")
        if self.learned and images is None:
            raise FitInputError(f"data_term={self.learned!r} reads the images' pixels (images=...)")
        init = dict(init or {})
        observed = {keywords[name]: inputs[keywords[name]]
                    for name in self.keywords if name not in predicted
                    and inputs.get(keywords[name]) is not None}
        self._check_batch(sizes, init, camera, observed)
        given = camera is not None
        if camera is None:
            camera = make_camera(sizes, self.config, init)
        errors = sample_problems(sizes, init, camera, camera_given=given)
        fitted = np.array([not message for message in errors])
        extra = {"images": images, "usable": usable, "prior_context": prior_context}
        if fitted.all():
            return self._solve(init, camera, observed, texture, groups=groups, **extra)
        rows = np.flatnonzero(fitted)
        names = {keyword: name for name, keyword in keywords.items()}
        result = None
        if len(rows):
            if isinstance(texture, Tensor) and texture.ndim == 4:
                texture = take_rows(texture, rows)
            result = self._solve(
                {key: take_rows(value, rows) for key, value in init.items()},
                camera[torch.as_tensor(rows, device=camera.device)],
                {key: term_class(names[key]).renumber_links(take_rows(value, rows), rows)
                 for key, value in observed.items()},
                texture,
                groups=kept_groups(groups, rows),
                **{key: take_rows(value, rows) for key, value in extra.items()},
            )
        return self._with_unfitted(result, fitted, init, camera, errors)

    def _solve(self, init: Mapping[str, Any], camera: Camera, observed: Mapping[str, Any],
               texture: str | Tensor | None, images: list[np.ndarray] | None = None,
               usable: Any = None, prior_context: Any = None,
               groups: tuple[SampleGroup, ...] = ()) -> FitResult:
        """Fit checked inputs: the data terms' observations by keyword (``observed``), the
        predicted terms from ``images`` (:meth:`fit`)."""
        camera = camera.to(self.device, self.body.dtype)
        like = {"device": self.device, "dtype": self.body.dtype}
        params = {key: torch.as_tensor(init[key]).to(**like) for key in PARAM_SIZES if key in init}
        keywords = self.keywords
        observations = {name: to_device(observed[keywords[name]], **like)
                        for name in keywords if keywords[name] in observed}
        if prior_context is not None:
            prior_context = to_device(prior_context, **like)
        batch = FitBatch(observations, camera, params, images=images, groups=groups,
                         prior_context=prior_context)
        if self.learned or len(observations) == len(self.terms):
            solver = self.solver if "global_orient" in params else self.scratch_solver
            return solver.solve(batch)
        return self._fit_predicted(batch, texture, usable)

    def _with_unfitted(self, result: FitResult | None, fitted: np.ndarray,
                       init: Mapping[str, Any], camera: Camera, errors: list[str]) -> FitResult:
        """The result of the whole batch from ``result``, the fit of the rows ``fitted``
        ``(B,)``, and the initial values of the others (flagged ``bad_input`` with their
        ``errors``; energies NaN)."""
        like = {"device": self.device, "dtype": self.body.dtype}
        keep = torch.as_tensor(fitted, device=self.device)
        count = len(fitted)
        params = {key: torch.as_tensor(init[key]).to(**like).clone() if key in init
                  else torch.full((count, size), torch.nan, **like)
                  for key, size in PARAM_SIZES.items()}
        camera = camera.to(**like)
        params["focal_length"] = camera.focal_length.clone()
        params["camera_center"] = camera.principal_point.clone()
        with torch.no_grad():
            output = self.body(**{key: params[key][~keep] for key in PARAM_SIZES})
        vertices = output.vertices.new_full((count, *output.vertices.shape[1:]), torch.nan)
        joints = output.joints.new_full((count, *output.joints.shape[1:]), torch.nan)
        vertices[~keep], joints[~keep] = output.vertices, output.joints

        def scatter(value: Tensor, into: Tensor | None = None) -> Tensor:
            """``value`` in the fitted rows of ``into`` (default NaN / False elsewhere)."""
            if into is None:
                fill = False if value.dtype == torch.bool else torch.nan
                into = value.new_full((count, *value.shape[1:]), fill)
            into[keep.to(into.device)] = value.to(into.dtype)
            return into

        if result is None:
            return FitResult(params, vertices, joints, vertices.new_full((count,), torch.nan),
                             {}, [], {"bad_input": ~keep}, {"total": 0.0}, errors,
                             faces=self.body.faces)
        for key, value in result.params.items():
            params[key] = scatter(value, params.get(key))
        fitted_errors = iter(result.errors)
        return FitResult(
            params=params,
            vertices=scatter(result.vertices, vertices),
            joints=scatter(result.joints, joints),
            energy=scatter(result.energy),
            terms={name: scatter(value) for name, value in result.terms.items()},
            stages=[{"energy": scatter(stage["energy"]),
                     "terms": {name: scatter(value) for name, value in stage["terms"].items()}}
                    for stage in result.stages],
            flags={**{name: scatter(value) for name, value in result.flags.items()},
                   "bad_input": ~keep},
            timings=result.timings,
            errors=[next(fitted_errors) if ok else message
                    for ok, message in zip(fitted, errors, strict=True)],
            faces=result.faces if result.faces is not None else self.body.faces,
            measures={name: scatter(value) for name, value in result.measures.items()},
        )

    __call__ = fit

    def _check_batch(self, sizes: np.ndarray, init: Mapping[str, np.ndarray],
                     camera: Camera | None, inputs: Mapping[str, Any]) -> None:
        """Raise :class:`FitInputError` unless every input has the images' batch size."""
        batch = {"images": len(sizes)}
        for keyword, value in inputs.items():
            batch[keyword] = (len(next(iter(value.values()))) if isinstance(value, Mapping)
                              else len(value))
        init_sizes = {key: len(value) for key, value in init.items()}
        if len(set(init_sizes.values())) == 1:
            batch["init"] = next(iter(init_sizes.values()))
        else:
            batch |= {f"init {key}": size for key, size in init_sizes.items()}
        if camera is not None:
            batch["camera"] = camera.batch_size
        if len(set(batch.values())) != 1:
            raise FitInputError(
                "batch sizes disagree: " + ", ".join(f"{k} {v}" for k, v in batch.items())
            )

    def _fit_predicted(self, batch: FitBatch, texture: str | Tensor | None,
                       usable: Any = None) -> FitResult:
        """``flow_rounds`` rounds of predicting flow targets (from the latest parameters) and
        fitting them with the batch's other terms."""
        built = 0.0
        params = batch.init
        for _ in range(self.flow_rounds):
            start = time.perf_counter()
            targets = self.predict_flow(batch.images, batch.camera, params, texture)
            if usable is not None:
                keep = torch.as_tensor(usable, dtype=torch.bool, device=self.device)
                targets["visible"] = targets["visible"] & keep[:, None]
            built += time.perf_counter() - start
            round_batch = dataclasses.replace(
                batch, observations={**batch.observations, "flow": targets}, init=params)
            result = self.solver.solve(round_batch)
            params = {key: result.params[key] for key in PARAM_SIZES}
        result.timings["data_term"] = built + result.timings.get("data_term", 0.0)
        return result
