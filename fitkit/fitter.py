"""``Fitter``: a body model, a pose prior, data terms, a schedule and a solver, ready to fit
many batches (``fitkit.fit`` holds one per call; ``python -m fitkit.refine`` one per run).

A batch comes in as read inputs (:mod:`fitkit.io.inputs`), keyed by each data term's ``fit``
keyword (:data:`fitkit.terms.TERMS`: ``keypoints=``, ``iuv=``, ``displacements=``,
``keypoints3d=``, or a user's term's own keyword), becomes a :class:`~fitkit.fitting.FitBatch`
and goes to the solver (SMPLify by default), which returns a :class:`~fitkit.fitting.FitResult`.
The one data term that can also come from the images is ``flow``: without ``displacements`` the
fitter predicts them with a displacement network (:class:`~fitkit.nets.predict.FlowPredictor`).
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
from fitkit.fitting import (
    PRESETS,
    FitBatch,
    FitConfig,
    FitResult,
    SMPLify,
    Solver,
    StageConfig,
    preset,
    to_device,
)
from fitkit.geometry import Camera
from fitkit.io.inputs import FitInputError
from fitkit.io.params import CAMERA_KEYS, PARAM_SIZES
from fitkit.nets import CheckpointError, FlowNet
from fitkit.nets.predict import TEXTURE_MODES, FlowPredictor
from fitkit.priors import PRIORS, PosePrior
from fitkit.priors import load as load_prior
from fitkit.terms import term_keywords

STAGE_SETTINGS = tuple(f.name for f in dataclasses.fields(StageConfig) if f.name != "name")
FIT_SETTINGS = tuple(f.name for f in dataclasses.fields(FitConfig) if f.name != "stages")

PREDICTED_TERMS: tuple[str, ...] = ("flow",)
"""Data terms the fitter can predict from the images when their input is not given."""


def fit_config(preset_name: str | FitConfig = "refine", **overrides: Any) -> FitConfig:
    """A fit schedule: a preset with overrides.

    Args:
        preset_name: ``"refine"`` (seed 003's SMPLify, the default), ``"spin"``, or a
            :class:`FitConfig`.
        overrides: :class:`StageConfig` fields (``iterations``, ``lr``, ``optimizer``,
            ``data_weight``, ``pose_prior_weight``, ``shape_prior_weight``, ...): a single value
            applies to every stage, a list or tuple gives one value per stage; and
            :class:`FitConfig` fields (``focal_length``, ``term_weights``, ``term_options``,
            ``divergence_factor``); ``term_weights`` and ``term_options`` update the preset's
            per-term entries rather than replace them all.
    Raises:
        FitInputError: unknown preset or setting, or a per-stage list of the wrong length.
    """
    if isinstance(preset_name, FitConfig):
        config = preset_name
    elif preset_name in PRESETS:
        config = preset(preset_name)
    else:
        raise FitInputError(
            f"unknown preset {preset_name!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    unknown = sorted(set(overrides) - set(STAGE_SETTINGS) - set(FIT_SETTINGS))
    if unknown:
        raise FitInputError(
            f"unknown fit setting(s) {', '.join(unknown)}; settings: preset, "
            f"{', '.join(STAGE_SETTINGS + FIT_SETTINGS)}"
        )
    count = len(config.stages)
    stages = list(config.stages)
    for key in (key for key in overrides if key in STAGE_SETTINGS):
        value = overrides[key]
        per_stage = isinstance(value, list | tuple) and not (key == "optimize" and value
                                                             and isinstance(value[0], str))
        values = list(value) if per_stage else [value] * count
        if len(values) != count:
            raise FitInputError(
                f"{key}: one value per stage ({count}: "
                f"{', '.join(stage.name for stage in stages)}), got {len(values)}"
            )
        try:
            stages = [dataclasses.replace(stage, **{key: item})
                      for stage, item in zip(stages, values, strict=True)]
        except (TypeError, ValueError) as error:
            raise FitInputError(f"{key}={value!r}: {error}") from None
    changes = {key: overrides[key] for key in overrides if key in FIT_SETTINGS}
    for key in ("term_weights", "term_options"):
        if key in changes:
            changes[key] = {**getattr(config, key), **changes[key]}
    return dataclasses.replace(config, stages=tuple(stages), **changes)


def resolve_prior(prior: str | os.PathLike | PosePrior | None) -> PosePrior | None:
    """A pose prior from a registry name (``"gmm"``, ``"vposer"``, ``"cnf"``), a path, an
    instance, or ``None`` (no prior).

    Raises:
        FitInputError: a name that is neither a known prior nor an existing path.
    """
    if prior is None or isinstance(prior, PosePrior):
        return prior
    if isinstance(prior, str) and prior not in PRIORS and not os.path.exists(prior):
        raise FitInputError(
            f"unknown prior {prior!r}; known priors: {', '.join(sorted(PRIORS))} "
            "(or the path of a prior file or folder)"
        )
    return load_prior(prior)


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def term_names(data_term: str | Sequence[str]) -> tuple[str, ...]:
    """Data-term names from ``"keypoints"``, ``"keypoints,densepose"`` or a list, checked
    against the registry.

    Raises:
        FitInputError: an unknown or repeated name, or none.
    """
    names = data_term.split(",") if isinstance(data_term, str) else list(data_term)
    names = [name.strip() for name in names if name.strip()]
    known = term_keywords()
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise FitInputError(f"unknown data term {', '.join(map(repr, unknown)) or repr(data_term)}"
                            f"; known data terms: {', '.join(sorted(known))}")
    if len(set(names)) != len(names):
        raise FitInputError(f"data term named twice in {data_term!r}")
    return tuple(names)


def make_camera(
    sizes: np.ndarray, config: FitConfig, init: Mapping[str, np.ndarray] | None = None
) -> Camera:
    """Cameras of images of ``sizes`` ``(B, 2)`` ``(W, H)``: the init's ``focal_length`` and
    ``camera_center`` when it has them, else the default camera (:meth:`Camera.default`) with
    the config's focal length (``None``: ``sqrt(w^2 + h^2)``)."""
    size = torch.as_tensor(np.asarray(sizes), dtype=torch.float32)
    init = init or {}
    if all(key in init for key in CAMERA_KEYS):
        return Camera(torch.as_tensor(init["focal_length"]).float(),
                      torch.as_tensor(init["camera_center"]).float(), size)
    return Camera.default(size, focal_length=config.focal_length)


class Fitter:
    """Body model, pose prior, data terms, schedule and solver, ready to fit batches.

    Args:
        data_term: a registered data term's name (``"keypoints"``, ``"densepose"``,
            ``"flow"``, ``"keypoints3d"``, a user's own), several as a list or a
            comma-separated string (their energies add up).
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
            and the schedule.
        config: ``preset`` (name or :class:`FitConfig`, default ``"refine"``) and overrides
            (:func:`fit_config`).
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
        **config: Any,
    ) -> None:
        if flow_rounds < 1:
            raise FitInputError(f"flow_rounds must be at least 1, got {flow_rounds}")
        self.terms = term_names(data_term)
        self.config = fit_config(config.pop("preset", "refine"), **config)
        self.device = resolve_device(device)
        if isinstance(body, BodyModel):
            self.body = body.to(self.device)
        else:
            self.body = load_body(body, device=self.device)
        self.prior = resolve_prior(prior)
        self.solver: Solver = solver or SMPLify(self.body, self.prior, self.config)
        self.flow_net = flow_net
        self.flow_rounds = flow_rounds
        self._predictors: dict[str, FlowPredictor] = {}

    @property
    def keywords(self) -> dict[str, str]:
        """``{term name: fit keyword}`` of the fitter's data terms."""
        keywords = term_keywords()
        return {name: keywords[name] for name in self.terms}

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
                ``no_data``); ``prior_context`` ``(B, C)`` conditions a conditional prior.
        Raises:
            FitInputError: a missing input or batch sizes that disagree.
        """
        images = inputs.pop("images", None)
        texture = inputs.pop("texture", None)
        usable = inputs.pop("usable", None)
        prior_context = inputs.pop("prior_context", None)
        keywords = self.keywords
        unknown = sorted(set(inputs) - set(keywords.values()))
        if unknown:
            raise FitInputError(f"inputs {unknown} belong to no data term of this fit "
                                f"({', '.join(f'{n}: {k}=' for n, k in keywords.items())})")
        predicted = [name for name, keyword in keywords.items() if name in PREDICTED_TERMS
                     and inputs.get(keyword) is None and images is not None]
        for name, keyword in keywords.items():
            if name not in predicted and inputs.get(keyword) is None:
                raise FitInputError(f"data_term={name!r} needs {keyword}=...")
        init = dict(init or {})
        self._check_batch(sizes, init, camera, {keywords[name]: inputs[keywords[name]]
                                                for name in self.terms if name not in predicted})
        if camera is None:
            camera = make_camera(sizes, self.config, init)
        camera = camera.to(self.device, self.body.dtype)
        like = {"device": self.device, "dtype": self.body.dtype}
        params = {key: torch.as_tensor(init[key]).to(**like) for key in PARAM_SIZES if key in init}
        observations = {name: to_device(inputs[keywords[name]], **like)
                        for name in self.terms if name not in predicted}
        if prior_context is not None:
            prior_context = to_device(prior_context, **like)
        batch = FitBatch(observations, camera, params, images=images,
                         prior_context=prior_context)
        if not predicted:
            return self.solver.solve(batch)
        return self._fit_predicted(batch, texture, usable)

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
