"""Fit settings and checks of a batch's values: presets with overrides (:func:`fit_config`),
data-term names, priors and devices by name, the default cameras of a batch, and the per-sample
problems that keep a sample out of a fit (:func:`sample_problems`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.fitting.config import PRESETS, FitConfig, StageConfig, preset
from fitkit.geometry import Camera
from fitkit.io.inputs import FitInputError
from fitkit.io.params import CAMERA_KEYS
from fitkit.io.runs import check_device
from fitkit.priors import PRIORS, PosePrior
from fitkit.priors import load as load_prior
from fitkit.terms import term_keywords

STAGE_SETTINGS = tuple(f.name for f in dataclasses.fields(StageConfig) if f.name != "name")
FIT_SETTINGS = tuple(f.name for f in dataclasses.fields(FitConfig) if f.name != "stages")

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
            per-term entries rather than replace them all, and a term's options update the
            preset's options of that term one by one (``term_options={"keypoints": {"format":
            "coco17"}}`` keeps the preset's ``rho`` and ``crop_size``).
    Raises:
        FitInputError: unknown preset or setting, a per-stage list of the wrong length, or a
            value out of range (non-finite ``lr``, weights or ``iterations``, a negative weight,
            ``term_weights`` / ``term_options`` for an unregistered data term; the setting named).
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
            if not isinstance(changes[key], Mapping):
                raise FitInputError(f"{key} must be a dict by data-term name, got "
                                    f"{type(changes[key]).__name__}")
            merged = dict(getattr(config, key))
            for name, value in changes[key].items():  # term options merge option by option
                both = key == "term_options" and isinstance(value, Mapping)
                merged[name] = {**merged.get(name, {}), **value} if both else value
            changes[key] = merged
    try:
        return dataclasses.replace(config, stages=tuple(stages), **changes)
    except ValueError as error:
        raise FitInputError(str(error)) from None


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
    """``device``, or CUDA when available, else the CPU.

    Raises:
        FitInputError: a device this machine does not have (``"tpu"``, ``"cuda"`` without a
            GPU).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        check_device(str(device))
    except ValueError as error:
        raise FitInputError(str(error)) from None
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


def sample_problems(
    sizes: np.ndarray, init: Mapping[str, Any], camera: Camera, camera_given: bool = False
) -> list[str]:
    """Why each sample's values cannot be fitted, ``""`` when they can.

    A sample cannot be fitted when its initial parameters (any key given; the camera keys only
    when no camera is given) hold a non-finite value, its ``transl`` puts the body at or behind
    the camera (camera-frame z <= 0), its image size is not positive, or its camera (the init's
    ``focal_length`` and ``camera_center``, or the given camera) has a focal length that is not
    > 0; a given camera also needs finite values and its ``image_size`` equal to the image's.

    Args:
        sizes: ``(B, 2)`` image sizes ``(W, H)``.
        init: initial parameters ``(B, ...)`` (arrays or tensors), any subset.
        camera: the B cameras of the fit.
        camera_given: whether ``camera`` was given (else it was made from ``sizes`` and
            ``init`` by :func:`make_camera`).
    Returns:
        B messages, the problems of a sample joined by ``"; "``.
    """
    count = len(sizes)
    problems: list[list[str]] = [[] for _ in range(count)]
    values = {key: as_numpy(value).reshape(count, -1) for key, value in init.items()
              if not (camera_given and key in CAMERA_KEYS)}  # a given camera replaces these
    for key, value in values.items():
        for row in np.flatnonzero(~np.isfinite(value).all(axis=1)):
            problems[row].append(f"init {key} is not finite: {format_row(value[row])}")
    sizes = np.asarray(sizes)
    for row in np.flatnonzero(~(sizes > 0).all(axis=1)):
        problems[row].append(f"image size {format_row(sizes[row])} is not positive")
    camera = camera.to("cpu", torch.float64)
    fields = {name: value.reshape(count, -1).numpy() for name, value in (
        ("focal_length", camera.focal_length), ("principal_point", camera.principal_point),
        ("image_size", camera.image_size), ("R", camera.R), ("t", camera.t)) if value is not None}
    if camera_given:
        for name, value in fields.items():
            for row in np.flatnonzero(~np.isfinite(value).all(axis=1)):
                problems[row].append(f"camera {name} is not finite: {format_row(value[row])}")
        differs = ~(np.round(fields["image_size"]) == sizes).all(axis=1)
        for row in np.flatnonzero(differs & np.isfinite(fields["image_size"]).all(axis=1)):
            problems[row].append(f"image size {format_row(sizes[row])} differs from the camera's "
                                 f"image_size {format_row(fields['image_size'][row])}")
    if camera_given or "focal_length" in init:
        focal = fields["focal_length"]
        source = "camera" if camera_given else "init"
        for row in np.flatnonzero(np.isfinite(focal).all(axis=1) & ~(focal > 0).all(axis=1)):
            problems[row].append(f"{source} focal_length {format_row(focal[row])} must be > 0")
    if "transl" in values:
        # init rows are camera-frame estimates, also for cameras with extrinsics
        depth = np.asarray(values["transl"], dtype=np.float64)[:, 2]
        for row in np.flatnonzero(np.isfinite(depth) & (depth <= 0)):
            problems[row].append(f"init transl {format_row(values['transl'][row])} puts the body "
                                 f"at or behind the camera (depth {depth[row]:.4g} m, needs > 0)")
    return ["; ".join(messages) for messages in problems]


def as_numpy(value: Any) -> np.ndarray:
    """An array or tensor as a numpy array (on the CPU)."""
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def format_row(row: np.ndarray) -> str:
    """One row of values for a message: ``[0.1, inf, 5]``; a long row shortened to its ends or,
    when it holds any, to its non-finite values (``69 values, non-finite at 5: nan``)."""
    row = np.asarray(row, dtype=np.float64).ravel()
    if len(row) <= 6:
        return f"[{', '.join(f'{value:.4g}' for value in row)}]"
    bad = np.flatnonzero(~np.isfinite(row))
    if len(bad):
        listed = ", ".join(f"{index}: {row[index]}" for index in bad[:4])
        return f"{len(row)} values, non-finite at {listed}{' ...' if len(bad) > 4 else ''}"
    return f"[{row[0]:.4g}, {row[1]:.4g}, ..., {row[-2]:.4g}, {row[-1]:.4g}]"


def take_rows(value: Any, rows: np.ndarray) -> Any:
    """The rows ``rows`` of one batch input: arrays and tensors along their first axis, dicts
    entry by entry, lists item by item; ``None`` as it is."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {key: take_rows(item, rows) for key, item in value.items()}
    if isinstance(value, Tensor):
        return value[torch.as_tensor(rows, device=value.device)]
    if isinstance(value, list | tuple):
        return [value[row] for row in rows]
    return np.asarray(value)[rows]
