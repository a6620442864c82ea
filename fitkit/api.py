"""``fitkit.fit``: fit the body to images in one call, from arrays, tensors or files.

```python
import fitkit
result = fitkit.fit("photo.jpg", keypoints="photo_keypoints.json", prior="gmm")
result = fitkit.fit(images, init="init.npz", data_term="densepose", iuv=iuv, iterations=50)
result.params["body_pose"], result.vertices, result.energy, result.flags
```

:func:`fit` reads its inputs (:func:`image_sizes`, :func:`read_init`, :func:`read_keypoints`,
:func:`read_iuv`), checks that they agree, and hands them to a :class:`Fitter`, which holds the
body model, the pose prior and the schedule (a preset of :mod:`fitkit.fitting.config` with
overrides, :func:`fit_config`) and can be called on many batches (``python -m fitkit.refine``
does). Samples are independent: a sample whose data holds no usable observation (an OpenPose file
with nobody in it) keeps its initial parameters and is flagged ``no_data``.

Readers take an optional ``errors`` list (one entry per sample): given one, a sample whose file is
missing or malformed gets an empty observation and its message in ``errors`` instead of stopping
the batch; without one, the first bad file raises.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fitkit.body import BodyModel, load_body
from fitkit.body.model import PARAM_SIZES, BodyOutput
from fitkit.fitting import PRESETS, FitConfig, FitResult, SMPLify, StageConfig, preset
from fitkit.geometry import Camera
from fitkit.io import CAMERA_KEYS, NoPersonError, OpenPoseError, read_openpose, read_params
from fitkit.nets import CheckpointError, FlowNet
from fitkit.nets.predict import TEXTURE_MODES, FlowPredictor
from fitkit.priors import PRIORS, PosePrior
from fitkit.priors import load as load_prior
from fitkit.terms import TERMS, DataTerm

ImageInput = str | os.PathLike | np.ndarray | Tensor | Sequence[str | os.PathLike]
"""Images: a path, a list of paths, or ``(H, W, 3)`` / ``(B, H, W, 3)`` arrays or tensors."""

TERM_INPUTS: dict[str, str] = {
    "keypoints": "keypoints", "densepose": "iuv", "flow": "displacements"
}
"""The :func:`fit` argument each data term needs."""

STAGE_SETTINGS = tuple(f.name for f in dataclasses.fields(StageConfig) if f.name != "name")
FIT_SETTINGS = tuple(f.name for f in dataclasses.fields(FitConfig) if f.name != "stages")


class FitInputError(ValueError):
    """Inputs of a fit that cannot be used: wrong shapes, batch sizes that disagree, unknown
    names, an input the chosen data term needs but did not get."""


# --------------------------------------------------------------------------- configuration


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
    if isinstance(prior, str) and prior not in PRIORS and not Path(prior).exists():
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


# --------------------------------------------------------------------------- readers


def _paths(value: Any) -> list[Path] | None:
    """``value`` as a list of paths if it is a path or a sequence of paths, else ``None``."""
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    if isinstance(value, list | tuple) and value and all(
        isinstance(item, str | os.PathLike) for item in value
    ):
        return [Path(item) for item in value]
    return None


def _record(errors: list[str] | None, index: int, error: Exception) -> None:
    """Put ``error`` in ``errors[index]``, or raise it when there is no error list."""
    if errors is None:
        raise error
    errors[index] = str(error)


def image_sizes(images: ImageInput, errors: list[str] | None = None) -> np.ndarray:
    """Sizes of images given as paths, arrays or tensors (files are not decoded).

    Args:
        images: a path or list of paths, an ``(H, W, 3)`` or ``(B, H, W, 3)`` array or tensor,
            or a list of ``(H, W, 3)`` arrays.
        errors: per-sample error list (module docstring); an unreadable file gets size 0.
    Returns:
        ``(B, 2)`` int ``(W, H)``.
    Raises:
        FileNotFoundError: a missing file (without ``errors``).
        FitInputError: an unreadable file or an array of the wrong shape.
    """
    paths = _paths(images)
    if paths is not None:
        sizes = np.zeros((len(paths), 2), dtype=np.int64)
        for index, path in enumerate(paths):
            try:
                if not path.is_file():
                    raise FileNotFoundError(f"image not found: {path}")
                try:
                    with Image.open(path) as image:
                        sizes[index] = image.size
                except OSError as error:
                    raise FitInputError(f"{path}: not a readable image ({error})") from None
            except (FileNotFoundError, FitInputError) as error:
                _record(errors, index, error)
        return sizes
    if isinstance(images, list | tuple):
        return np.concatenate([image_sizes(image) for image in images])
    shape = tuple(images.shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) != 4 or shape[-1] not in (3, 4):
        raise FitInputError(
            f"images must have shape (H, W, 3) or (B, H, W, 3), got {tuple(images.shape)}"
        )
    return np.tile(np.array([[shape[2], shape[1]]], dtype=np.int64), (shape[0], 1))


def read_images(images: ImageInput) -> list[np.ndarray]:
    """Images as a list of ``(H, W, 3)`` uint8 RGB arrays (float inputs are read as [0, 1]).

    Raises:
        FileNotFoundError: a missing file.
        FitInputError: an unreadable file or an array of the wrong shape.
    """
    paths = _paths(images)
    if paths is not None:
        result = []
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            try:
                with Image.open(path) as image:
                    result.append(np.asarray(image.convert("RGB")))
            except OSError as error:
                raise FitInputError(f"{path}: not a readable image ({error})") from None
        return result
    if isinstance(images, list | tuple):
        return [image for item in images for image in read_images(item)]
    image_sizes(images)
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.dtype.kind == "f":
        array = (np.clip(array, 0.0, 1.0) * 255.0).round()
    return [np.ascontiguousarray(image[..., :3].astype(np.uint8)) for image in array]


def read_init(
    init: str | os.PathLike | Mapping[str, Any] | FitResult | None,
    sizes: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Initial parameters as float32 arrays.

    Args:
        init: a parameter ``.npz`` (``docs/formats.md``), a dict of arrays or tensors (any of
            ``global_orient``, ``body_pose``, ``betas``, ``transl``, ``focal_length``,
            ``camera_center``, ``image_names``), a :class:`FitResult`, or ``None``.
        sizes: ``(B, 2)`` image sizes, to fill missing camera keys of a file.
        names: image name stems; when given and ``init`` has ``image_names`` holding all of
            them, the rows are picked by name.
    Returns:
        The parameter arrays ``(N, ...)`` (``image_names`` dropped).
    Raises:
        FileNotFoundError: a missing file.
        FitInputError, fitkit.io.ParamsFileError: malformed content.
    """
    if init is None:
        return {}
    if isinstance(init, FitResult):
        init = init.params
    if isinstance(init, str | os.PathLike):
        size = None
        if sizes is not None and len(sizes) and (sizes == sizes[0]).all():
            size = sizes[0]
        arrays = read_params(init, image_size=size)
    else:
        arrays = {}
        for key, value in init.items():
            if key == "image_names":
                arrays[key] = np.asarray(value).astype(str)
                continue
            if key not in PARAM_SIZES and key not in CAMERA_KEYS:
                raise FitInputError(
                    f"init: unknown key {key!r}; expected {', '.join((*PARAM_SIZES, *CAMERA_KEYS))}"
                )
            value = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            width = PARAM_SIZES.get(key, 2)
            if value.ndim == 1:
                value = value[None]
            if value.ndim != 2 or value.shape[1] != width:
                raise FitInputError(
                    f"init: {key} must have shape (B, {width}), got {tuple(value.shape)}"
                )
            arrays[key] = value.astype(np.float32)
    stored = arrays.pop("image_names", None)
    if names is not None and stored is not None:
        rows = {name: row for row, name in enumerate(stored.tolist())}
        if all(name in rows for name in names):
            picked = [rows[name] for name in names]
            arrays = {key: value[picked] for key, value in arrays.items()}
    return arrays


def read_keypoints(
    keypoints: Any, errors: list[str] | None = None
) -> np.ndarray:
    """OpenPose BODY_25 keypoints as a ``(B, 25, 3)`` float32 array.

    Args:
        keypoints: ``(B, 25, 3)`` or ``(25, 3)`` array or tensor ``(u, v, confidence)``, or an
            OpenPose JSON path or list of paths (the largest person of each file). A file that
            lists nobody gives all-zero keypoints (the sample is flagged ``no_data``).
        errors: per-sample error list (module docstring).
    Raises:
        FileNotFoundError: a missing file (without ``errors``).
        fitkit.io.OpenPoseError: a malformed file (without ``errors``).
        FitInputError: an array of the wrong shape.
    """
    paths = _paths(keypoints)
    if paths is not None:
        result = np.zeros((len(paths), 25, 3), dtype=np.float32)
        for index, path in enumerate(paths):
            try:
                result[index] = read_openpose(path)
            except NoPersonError:
                continue
            except (FileNotFoundError, OpenPoseError) as error:
                _record(errors, index, error)
        return result
    array = keypoints.detach().cpu().numpy() if isinstance(keypoints, Tensor) else np.asarray(
        keypoints
    )
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (25, 3) or array.dtype.kind not in "fiu":
        raise FitInputError(
            "keypoints must have shape (B, 25, 3) or (25, 3): (u, v, confidence) in OpenPose "
            f"BODY_25 order; got {array.dtype} {tuple(np.shape(keypoints))}"
        )
    return array.astype(np.float32)


def read_iuv(iuv: Any, errors: list[str] | None = None) -> np.ndarray:
    """DensePose IUV images as a ``(B, H, W, 3)`` uint8 array in DensePose's channel order
    ``(I, U * 255, V * 255)``.

    Args:
        iuv: ``(B, H, W, 3)`` or ``(H, W, 3)`` uint8 array or tensor ``(I, U, V)``, or
            ``*_IUV.png`` path(s) as DensePose writes them (with OpenCV, so the file's R, G, B
            hold V, U, I; they are flipped back here). All images must have one size.
        errors: per-sample error list (module docstring); a bad file gives an empty image.
    Raises:
        FileNotFoundError: a missing file (without ``errors``).
        FitInputError: an unreadable file, a wrong shape, or images of different sizes.
    """
    paths = _paths(iuv)
    if paths is not None:
        images: list[np.ndarray | None] = []
        for index, path in enumerate(paths):
            image = None
            try:
                if not path.is_file():
                    raise FileNotFoundError(f"DensePose IUV file not found: {path}")
                try:
                    with Image.open(path) as file:
                        image = np.asarray(file.convert("RGB"))[..., ::-1]
                except OSError as error:
                    raise FitInputError(f"{path}: not a readable image ({error})") from None
            except (FileNotFoundError, FitInputError) as error:
                _record(errors, index, error)
            images.append(image)
        shapes = {image.shape for image in images if image is not None}
        if len(shapes) > 1:
            raise FitInputError(f"IUV images must all have one size, got {sorted(shapes)}")
        shape = shapes.pop() if shapes else (1, 1, 3)
        return np.stack([np.zeros(shape, np.uint8) if image is None else image
                         for image in images])
    array = iuv.detach().cpu().numpy() if isinstance(iuv, Tensor) else np.asarray(iuv)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise FitInputError(
            f"iuv must have shape (B, H, W, 3) or (H, W, 3) (I, U, V), got {tuple(np.shape(iuv))}"
        )
    return np.ascontiguousarray(array.astype(np.uint8))


def make_camera(
    sizes: np.ndarray, config: FitConfig, init: Mapping[str, np.ndarray] | None = None
) -> Camera:
    """Cameras of images of ``sizes`` ``(B, 2)`` ``(W, H)``: the init's ``focal_length`` and
    ``camera_center`` when it has them, else the config's default (focal length
    ``config.focal_length`` or ``sqrt(w^2 + h^2)``, principal point at the image centre)."""
    size = torch.as_tensor(sizes, dtype=torch.float32)
    init = init or {}
    if all(key in init for key in CAMERA_KEYS):
        return Camera(torch.as_tensor(init["focal_length"]).float(),
                      torch.as_tensor(init["camera_center"]).float(), size)
    if config.focal_length is None:
        focal = size.square().sum(dim=-1, keepdim=True).sqrt().expand(-1, 2)
    else:
        focal = torch.full_like(size, float(config.focal_length))
    return Camera(focal.clone(), (size - 1.0) / 2.0, size)


# --------------------------------------------------------------------------- fitting


class Fitter:
    """A body model, a pose prior, a data term kind and a schedule, ready to fit batches.

    Args:
        data_term: ``"keypoints"``, ``"densepose"`` or ``"flow"`` (:data:`TERM_INPUTS`).
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
        config: ``preset`` (name or :class:`FitConfig`, default ``"refine"``) and overrides
            (:func:`fit_config`).
    Raises:
        FitInputError: unknown data term, prior, preset or setting.
    """

    def __init__(
        self,
        data_term: str = "keypoints",
        prior: str | os.PathLike | PosePrior | None = "gmm",
        body: str | os.PathLike | BodyModel = "open",
        device: torch.device | str | None = None,
        flow_net: str | os.PathLike | FlowNet = "auto",
        flow_rounds: int = 1,
        **config: Any,
    ) -> None:
        known = [name for name in TERM_INPUTS if name in TERMS]
        if flow_rounds < 1:
            raise FitInputError(f"flow_rounds must be at least 1, got {flow_rounds}")
        if data_term not in known:
            raise FitInputError(f"unknown data term {data_term!r}; known data terms: "
                                f"{', '.join(known)}")
        self.data_term = data_term
        self.config = fit_config(config.pop("preset", "refine"), **config)
        self.device = resolve_device(device)
        if isinstance(body, BodyModel):
            self.body = body.to(self.device)
        else:
            self.body = load_body(body, device=self.device)
        self.prior = resolve_prior(prior)
        self.smplify = SMPLify(self.body, self.prior, self.config)
        self.flow_net = flow_net
        self.flow_rounds = flow_rounds
        self._predictors: dict[str, FlowPredictor] = {}

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

    def build_term(self, camera: Camera, init: Mapping[str, Tensor], **inputs: Any) -> DataTerm:
        """The data term of a batch from its input (already read, on the device).

        Raises:
            FitInputError: per-pixel displacements without initial parameters to render.
        """
        name = TERM_INPUTS[self.data_term]
        value = inputs[name]
        if self.data_term == "keypoints":
            return self.config.build_term("keypoints", keypoints=value)
        if self.data_term == "densepose":
            return self.config.build_term("densepose", iuv=value, body=self.body)
        if isinstance(value, Mapping):
            return self.config.build_term("flow", targets=value["targets"],
                                          visible=value["visible"], body=self.body)
        missing = [key for key in PARAM_SIZES if key not in init]
        if missing:
            raise FitInputError(
                "data_term='flow' with per-pixel displacements needs the initial parameters "
                f"they were predicted on (init=...; missing {', '.join(missing)})"
            )
        with torch.no_grad():
            vertices = self.body(**{key: init[key] for key in PARAM_SIZES}).vertices
        return self.config.build_term("flow", displacements=value, init_vertices=vertices,
                                      camera=camera, body=self.body)

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
            init: initial parameters ``(B, ...)`` (:func:`read_init`), any subset.
            camera: B cameras, or ``None`` for :func:`make_camera`.
            inputs: the data term's input (``keypoints`` ``(B, 25, 3)``, ``iuv``
                ``(B, H, W, 3)`` uint8, or ``displacements``); for ``"flow"``, ``images``
                (B ``(H, W, 3)`` uint8 arrays) instead of ``displacements`` predicts them
                with the displacement network, with ``texture`` (see :meth:`predict_flow`) and
                optionally ``usable`` ``(B,)`` bool (samples without a usable image get no
                targets and are flagged ``no_data``).
        Raises:
            FitInputError: a missing input or batch sizes that disagree.
        """
        name = TERM_INPUTS[self.data_term]
        images = inputs.pop("images", None)
        texture = inputs.pop("texture", None)
        usable = inputs.pop("usable", None)
        predict = self.data_term == "flow" and inputs.get(name) is None and images is not None
        if predict:
            inputs[name] = {"images": images}
        if inputs.get(name) is None:
            raise FitInputError(f"data_term={self.data_term!r} needs {name}=...")
        init = dict(init or {})
        value = inputs[name]
        count = len(next(iter(value.values()))) if isinstance(value, Mapping) else len(value)
        batch = {"images": len(sizes), name: count}
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
        if camera is None:
            camera = make_camera(sizes, self.config, init)
        camera = camera.to(self.device, self.body.dtype)
        like = {"device": self.device, "dtype": self.body.dtype}
        params = {key: torch.as_tensor(init[key]).to(**like) for key in PARAM_SIZES if key in init}
        data = inputs[name]
        if predict:
            return self._fit_predicted(images, camera, params, texture, usable)
        start = time.perf_counter()
        if isinstance(data, Mapping):
            data = {key: _to(value, **like) for key, value in data.items()}
        else:
            data = _to(data, **like)
        term = self.build_term(camera, params, **{name: data})
        built = time.perf_counter() - start
        result = self.smplify.fit({self.data_term: term}, camera, params)
        result.timings["data_term"] = built
        return result

    def _fit_predicted(self, images: Sequence[np.ndarray], camera: Camera,
                       params: dict[str, Tensor], texture: str | Tensor | None,
                       usable: Any = None) -> FitResult:
        """``flow_rounds`` rounds of predicting flow targets and fitting them."""
        built = 0.0
        for _ in range(self.flow_rounds):
            start = time.perf_counter()
            targets = self.predict_flow(images, camera, params, texture)
            if usable is not None:
                keep = torch.as_tensor(usable, dtype=torch.bool, device=self.device)
                targets["visible"] = targets["visible"] & keep[:, None]
            term = self.build_term(camera, params, displacements=targets)
            built += time.perf_counter() - start
            result = self.smplify.fit({self.data_term: term}, camera, params)
            params = {key: result.params[key] for key in PARAM_SIZES}
        result.timings["data_term"] = built
        return result

    __call__ = fit


def _to(value: Any, device: torch.device, dtype: torch.dtype) -> Tensor:
    """An array or tensor on ``device``; floating values in ``dtype``."""
    tensor = torch.as_tensor(value).to(device)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def read_displacements(displacements: Any) -> Any:
    """Flow inputs: ``(B, 2, H, W)`` or ``(B, H, W, 2)`` per-pixel displacements (array or
    tensor), or per-vertex targets ``{"targets": (B, V, 2), "visible": (B, V) bool}``.

    Raises:
        FitInputError: anything else.
    """
    if isinstance(displacements, Mapping):
        if set(displacements) != {"targets", "visible"}:
            raise FitInputError(
                "per-vertex displacements are {'targets': (B, V, 2), 'visible': (B, V)}, got "
                f"keys {sorted(displacements)}"
            )
        return dict(displacements)
    shape = tuple(np.shape(displacements))
    if len(shape) != 4 or 2 not in (shape[1], shape[3]):
        raise FitInputError(
            f"displacements must have shape (B, 2, H, W) or (B, H, W, 2), got {shape}"
        )
    return displacements


def fit(
    images: ImageInput | None,
    init: str | os.PathLike | Mapping[str, Any] | FitResult | None = None,
    data_term: str = "keypoints",
    prior: str | os.PathLike | PosePrior | None = "gmm",
    keypoints: Any = None,
    iuv: Any = None,
    displacements: Any = None,
    body: str | os.PathLike | BodyModel = "open",
    camera: Camera | None = None,
    device: torch.device | str | None = None,
    flow_net: str | os.PathLike | FlowNet = "auto",
    texture: str | Tensor | None = None,
    flow_rounds: int = 1,
    **config: Any,
) -> FitResult:
    """Fit the body model to a batch of images.

    Args:
        images: the images (a path, a list of paths, ``(H, W, 3)`` / ``(B, H, W, 3)`` uint8 or
            float arrays or tensors); their pixels are read for ``"flow"`` without
            ``displacements``, otherwise only their size is used. ``None`` when ``camera`` is
            given (and displacements or another term's input are).
        init: initial parameters: a parameter ``.npz`` (``docs/formats.md``; rows picked by
            image name when ``images`` are paths), a dict of arrays or tensors, a
            :class:`FitResult`, or ``None`` (upright body facing the camera, translation from
            the data).
        data_term: ``"keypoints"``, ``"densepose"`` or ``"flow"``.
        prior: ``"gmm"``, ``"vposer"``, ``"cnf"``, a path, a :class:`PosePrior` or ``None``.
        keypoints: for ``"keypoints"``: ``(B, 25, 3)`` array or tensor, or OpenPose JSON path(s).
        iuv: for ``"densepose"``: ``(B, H, W, 3)`` uint8 ``(I, U, V)`` or ``*_IUV.png`` path(s).
        displacements: for ``"flow"``: ``(B, 2, H, W)`` pixel displacements from a render of
            the initial bodies to the image, or per-vertex targets (:func:`read_displacements`);
            ``None`` predicts them from the images with ``flow_net`` (``init`` required).
        body: ``"open"``, a body model file or folder, or a :class:`BodyModel`.
        camera: B cameras; default from the init's ``focal_length`` and ``camera_center``, else
            the preset's default for the image size.
        device: where to fit; default CUDA when available, else the CPU.
        flow_net: the displacement network for predicted flow: ``"auto"`` (default: the
            shipped ``"open"`` network, with texture input, when ``texture`` is given, else the
            shipped ``"open-notexture"``), a shipped name, a checkpoint path or a
            :class:`FlowNet`.
        texture: the subject's texture, for a network with texture input: a ``(B, 3, T, T)`` /
            ``(3, T, T)`` RGB UV texture in [0, 1] (e.g. estimated over many frames with
            :func:`fitkit.texture.estimate_texture`), ``"estimate"`` (back-projected from each
            image alone at its initial body), ``"other"`` (the next image's estimate; an
            ablation), or ``None`` (none known).
        flow_rounds: predicted flow: rounds of predicting (from the latest fit) and fitting.
        config: ``preset`` (``"refine"`` default, ``"spin"``, or a :class:`FitConfig`) and
            overrides, e.g. ``iterations=50``, ``lr=0.02``, ``optimizer="lbfgs"``,
            ``pose_prior_weight=[0, 3]``, ``term_weights={"keypoints": 2}`` (:func:`fit_config`).
    Returns:
        A :class:`FitResult`: ``params`` (``docs/formats.md`` layout), ``vertices``, ``joints``,
        ``energy`` and ``terms`` per sample, ``flags``, ``timings``.
    Raises:
        FileNotFoundError: a missing file (named).
        FitInputError: unknown data term, prior or setting; an input the data term needs is
            missing; wrong shapes; batch sizes that disagree (both named).
        fitkit.io.OpenPoseError, fitkit.io.ParamsFileError: malformed files.
    """
    start = time.perf_counter()
    fitter = Fitter(data_term, prior, body, device, flow_net=flow_net, flow_rounds=flow_rounds,
                    **config)
    name = TERM_INPUTS[data_term]
    given = {"keypoints": keypoints, "iuv": iuv, "displacements": displacements}
    predict = data_term == "flow" and displacements is None
    if predict and images is None:
        raise FitInputError("data_term='flow' needs displacements=... or images to predict "
                            "them from")
    if given[name] is None and not predict:
        raise FitInputError(f"data_term={data_term!r} needs {name}=...")
    if images is None:
        if camera is None:
            raise FitInputError("fit needs images (for their size) or a camera")
        sizes = camera.image_size.detach().cpu().numpy().round().astype(np.int64)
    else:
        sizes = image_sizes(images)
    paths = _paths(images)
    names = [path.stem for path in paths] if paths is not None else None
    params = read_init(init, sizes, names)
    inputs: dict[str, Any] = {}
    if name == "keypoints":
        inputs[name] = read_keypoints(keypoints)
    elif name == "iuv":
        inputs[name] = read_iuv(iuv)
    elif predict:
        inputs |= {"images": read_images(images), "texture": texture}
    else:
        inputs[name] = read_displacements(displacements)
    loaded = time.perf_counter() - start
    result = fitter(sizes, params, camera, **inputs)
    result.timings["setup"] = loaded
    return result
