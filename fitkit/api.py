"""``fitkit.fit``: fit the body to images in one call, from arrays, tensors or files.

```python
import fitkit
result = fitkit.fit("photo.jpg", keypoints="photo_keypoints.json", prior="gmm")
result = fitkit.fit(images, init="init.npz", data_term="densepose", iuv=iuv, iterations=50)
result = fitkit.fit(images, init="init.npz", data_term=["keypoints", "densepose"],
                    keypoints=keypoint_files, iuv=iuv_files)
result.params["body_pose"], result.vertices, result.energy, result.flags
```

:func:`fit` reads each data term's input with the term's own reader (:mod:`fitkit.terms`: every
registered term names its ``fit`` keyword and reads arrays or files through :mod:`fitkit.io`),
checks that the inputs agree, and hands them to a :class:`~fitkit.fitter.Fitter` (body model,
pose prior, schedule and solver), reused across calls with the same settings. Samples are
independent: a sample whose data holds no usable observation (an OpenPose file with nobody in
it) keeps its initial parameters and is flagged ``no_data``; a sample whose values cannot be
fitted (a non-finite initial parameter, a body at or behind the camera, a focal length <= 0, an
image size other than the given camera's) is not fitted, keeps its initial values, and is flagged
``bad_input`` with its reason in ``result.errors``, while the others are fitted exactly as without
it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.fitter import (
    FIT_SETTINGS,
    STAGE_SETTINGS,
    Fitter,
    fit_config,
    learned_solver,
    make_camera,
    resolve_device,
    resolve_prior,
    term_names,
)
from fitkit.fitting import FitResult, SampleGroup
from fitkit.geometry import Camera
from fitkit.io.inputs import (
    FitInputError,
    ImageInput,
    as_paths,
    image_sizes,
    read_displacements,
    read_images,
    read_init,
    read_iuv,
    read_keypoints,
)
from fitkit.nets import FlowNet
from fitkit.priors import PosePrior
from fitkit.regress import regress
from fitkit.terms import term_class, term_keywords
from fitkit.terms.keypoints import options_with_format

__all__ = [
    "FIT_SETTINGS",
    "STAGE_SETTINGS",
    "FitInputError",
    "Fitter",
    "ImageInput",
    "fit",
    "fit_config",
    "image_sizes",
    "make_camera",
    "read_displacements",
    "read_images",
    "read_init",
    "read_iuv",
    "read_keypoints",
    "resolve_device",
    "resolve_prior",
]

CACHED_FITTERS = 4
"""Fitters :func:`fit` keeps for reuse (body, prior and networks loaded once)."""

_fitters: dict[str, Fitter] = {}


def cached_fitter(data_term: Any, prior: Any, body: Any, device: Any, **settings: Any) -> Fitter:
    """A :class:`~fitkit.fitter.Fitter` with these settings, reused when the same settings come
    again (by value for names, paths and numbers; by identity for objects such as a
    :class:`BodyModel`), so repeated :func:`fit` calls do not reload the body, the prior or
    the networks. The last :data:`CACHED_FITTERS` are kept.
    """
    key = repr((data_term, _key(prior), _key(body), str(resolve_device(device)),
                sorted((name, _key(value)) for name, value in settings.items())))
    fitter = _fitters.pop(key, None)
    if fitter is None:
        fitter = Fitter(data_term, prior, body, device, **settings)
    _fitters[key] = fitter
    while len(_fitters) > CACHED_FITTERS:
        _fitters.pop(next(iter(_fitters)))
    return fitter


def _key(value: Any) -> Any:
    """A cache key part: plain values as they are, objects by identity."""
    if value is None or isinstance(value, str | int | float | bool | os.PathLike):
        return str(value)
    if isinstance(value, list | tuple):
        return tuple(_key(item) for item in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _key(v)) for k, v in value.items()))
    return f"id:{id(value)}"


def fit(
    images: ImageInput | None,
    init: str | os.PathLike | Mapping[str, Any] | FitResult | None = None,
    data_term: str | Sequence[str] = "keypoints",
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
    prior_context: Any = None,
    keypoint_format: str | None = None,
    refit_net: Any = "auto",
    refit_iterations: int | None = None,
    regress_net: Any = "auto",
    groups: Sequence[SampleGroup | Sequence[int]] | None = None,
    betas: Any = None,
    fix_betas: bool = False,
    **config: Any,
) -> FitResult:
    """Fit the body model to a batch of images.

    Args:
        images: the images (a path, a list of paths, ``(H, W, 3)`` / ``(B, H, W, 3)`` uint8 or
            float arrays or tensors); their pixels are read for ``"flow"`` without
            ``displacements``, otherwise only their size is used. ``None`` when ``camera`` is
            given (and displacements or another term's input are).
        init: initial parameters: a parameter ``.npz`` (``docs/formats.md``; rows picked by
            image name when ``images`` are paths) or another tool's output (HMR 2.0, CameraHMR,
            NLF: :mod:`fitkit.io.adapters`), a dict of arrays or tensors, a
            :class:`FitResult`, or ``None``: from scratch (the ``"scratch"`` preset from four
            global orientations, the best kept: :class:`fitkit.fitting.multistart.MultiStart`;
            so also when ``init`` lacks ``global_orient``); or ``"regress"``: from the HMR/SPIN
            regressor's estimate on the images (:func:`fitkit.regress.regress` with
            ``regress_net``, its crops around the keypoints when given; a file named
            ``regress`` is ``"./regress"``).
        data_term: a registered data term (``"keypoints"``, ``"densepose"``, ``"flow"``,
            ``"keypoints3d"``, or one registered from the user's own module with
            :func:`fitkit.terms.register_term`), or several as a list (their energies add up).
        prior: ``"gmm"``, ``"vposer"``, ``"cnf"``, a path, a :class:`PosePrior` or ``None``.
        keypoints: for ``"keypoints"``: ``(B, K, 3)`` array or tensor of a keypoint format
            (OpenPose BODY_25, COCO-17, COCO-WholeBody, Halpe-26, H36M-17, MediaPipe Pose), or
            JSON path(s) of OpenPose, mmpose or COCO results (docs/formats.md).
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
            :func:`fitkit.render.estimate_texture`), ``"estimate"`` (back-projected from each
            image alone at its initial body), ``"other"`` (the next image's estimate; an
            ablation), or ``None`` (none known).
        flow_rounds: predicted flow: rounds of predicting (from the latest fit) and fitting.
        prior_context: ``(B, C)`` conditioning of a conditional pose prior.
        keypoint_format: the keypoints' format (``"coco17"``, ...; default: the one the files
            name, else by the count K), short for ``term_options={"keypoints": {"format": ...}}``
            (merged into the preset's keypoints options).
        refit_net: for ``data_term="refit"`` (the ReFit learned optimizer on the images'
            pixels, from ``init`` when given, else from its own guess; ``keypoints`` optional,
            they place the crop and score the result, ``docs/refit.md``): ``"auto"`` (the
            shipped open network), a checkpoint path or a :class:`~fitkit.nets.refit.ReFit`.
        refit_iterations: for ``"refit"``: T, feedback-update steps (default the network's, 5).
        groups: samples that share parameters (``docs/groups.md``): each a
            :class:`~fitkit.fitting.SampleGroup` (``shares="all"``: views of one body, with a
            ``camera`` carrying extrinsics; ``"betas"``: frames or photos of one subject) or a
            list of batch rows (``shares="betas"``). A video adds ``data_term=[...,
            "temporal"]`` with ``temporal=previous_frames(sequence_ids)``.
        betas: a known shape, ``(10,)`` or ``(B, 10)``: the initial ``betas`` (over the
            init's), or with ``fix_betas`` the shape the fit keeps (known shape; a group takes
            its first sample's).
        fix_betas: keep ``betas`` fixed.
        regress_net: for ``init="regress"``: ``"auto"`` (the shipped open regressor), a
            regressor checkpoint path or a :class:`~fitkit.nets.regressor.Regressor`.
        config: other data terms' inputs by their keywords (``keypoints3d=...``, a user
            term's own), ``preset`` (``"refine"`` default with an initial ``global_orient``,
            ``"scratch"`` without; ``"spin"``; or a :class:`FitConfig`) and
            overrides, e.g. ``iterations=50``, ``lr=0.02``, ``optimizer="lbfgs"``,
            ``pose_prior_weight=[0, 3]``, ``term_weights={"keypoints": 2}`` (:func:`fit_config`);
            ``compile=True`` compiles SMPLify's objective with ``torch.compile`` (the first
            call pays minutes of compiling; later calls of the same sizes are faster).
    Returns:
        A :class:`FitResult`: ``params`` (``docs/formats.md`` layout), ``vertices``, ``joints``,
        ``energy`` and ``terms`` per sample, ``flags``, ``timings``, and ``errors`` (why a
        sample is flagged ``bad_input``, ``""`` for the others).
    Raises:
        FileNotFoundError: a missing file (named).
        FitInputError: unknown data term, prior or setting, or a setting out of range; an input
            the data term needs is missing; wrong shapes; batch sizes that disagree (both
            named); an unreadable or oversized image, a bad DensePose file (named).
        fitkit.io.openpose.KeypointFileError (OpenPose's: fitkit.io.OpenPoseError),
            fitkit.io.ParamsFileError: malformed files.
    """
    start = time.perf_counter()
    learned = learned_solver(data_term)
    terms = (learned,) if learned else term_names(data_term)
    if keypoint_format is not None:
        config = _with_keypoint_format(config, keypoint_format, terms)
    settings = {key: value for key, value in config.items() if key not in _input_keywords()}
    fitter = cached_fitter(terms, prior, body, device, flow_net=flow_net,
                           flow_rounds=flow_rounds, **settings,
                           **({"refit_net": refit_net, "refit_iterations": refit_iterations}
                              if learned else {}))
    given = {"keypoints": keypoints, "iuv": iuv, "displacements": displacements}
    given |= {key: value for key, value in config.items() if key in _input_keywords()}
    inputs: dict[str, Any] = {}
    for name, keyword in fitter.keywords.items():
        value = given.get(keyword)
        if value is None and name == "flow" and images is not None:
            inputs |= {"images": None, "texture": texture}  # predicted from the images
        elif value is None and name in fitter.optional:
            continue
        elif value is None:
            hint = " or images to predict them from" if name == "flow" else ""
            raise FitInputError(f"data_term={name!r} needs {keyword}=...{hint}")
        else:
            inputs[keyword] = term_class(name).read(value)
    stray = sorted(key for key, value in given.items()
                   if value is not None and key not in fitter.keywords.values())
    if stray:
        raise FitInputError(f"{', '.join(stray)} given, but no data term of this fit reads it "
                            f"(data_term={list(terms)})")
    if learned and images is not None:
        inputs["images"] = None  # the learned optimizer reads the pixels
    if images is None:
        if camera is None:
            raise FitInputError("fit needs images (for their size) or a camera")
        sizes = camera.image_size.detach().cpu().numpy().round().astype(np.int64)
    else:
        sizes = image_sizes(images)
    if "images" in inputs:
        inputs["images"] = read_images(images)
    paths = as_paths(images)
    names = [path.stem for path in paths] if paths is not None else None
    if isinstance(init, str) and init == "regress":
        if images is None:
            raise FitInputError("init='regress' regresses from the images; give the images")
        init = regress(images, keypoints=inputs.get("keypoints"), net=regress_net,
                       device=device, camera=camera)
    params = read_init(init, sizes, names)
    groups = _groups(groups, betas, fix_betas, params, len(sizes))
    if groups:
        inputs["groups"] = groups
    if prior_context is not None:
        inputs["prior_context"] = prior_context
    loaded = time.perf_counter() - start
    result = fitter(sizes, params, camera, **inputs)
    result.timings["setup"] = loaded
    return result


def _groups(groups: Sequence[Any] | None, betas: Any, fix_betas: bool,
            params: dict[str, np.ndarray], batch: int) -> tuple[SampleGroup, ...]:
    """The fit's sample groups, with known shapes; ``betas`` also goes into ``params``.

    Raises:
        FitInputError: ``betas`` not of shape ``(10,)`` or ``(B, 10)``; ``fix_betas`` without
            ``betas``; a group that is not a SampleGroup or a list of rows.
    """
    made = []
    for number, group in enumerate(groups or ()):
        if isinstance(group, SampleGroup):
            made.append(group)
            continue
        try:
            made.append(SampleGroup(tuple(int(index) for index in group), shares="betas"))
        except (TypeError, ValueError) as error:
            raise FitInputError(f"groups[{number}]: expected a SampleGroup or a list of batch "
                                f"rows ({error})") from None
    if betas is None:
        if fix_betas:
            raise FitInputError("fix_betas=True needs betas=... (the known shape)")
        return tuple(made)
    known = np.asarray(betas, dtype=np.float64)
    if known.shape == (10,):
        known = np.repeat(known[None], batch, axis=0)
    if known.shape != (batch, 10):
        raise FitInputError(f"betas must have shape (10,) or ({batch}, 10), got {known.shape}")
    params["betas"] = known.astype(np.float32)
    if not fix_betas:
        return tuple(made)
    shape = torch.as_tensor(known, dtype=torch.float32)
    grouped = {index for group in made for index in group.indices}
    fixed = [SampleGroup(group.indices, group.shares, shape[group.indices[0]])
             for group in made]
    fixed += [SampleGroup((row,), "betas", shape[row]) for row in range(batch)
              if row not in grouped]
    return tuple(fixed)


def _with_keypoint_format(config: dict[str, Any], keypoint_format: str,
                          terms: Sequence[str]) -> dict[str, Any]:
    """``config`` with ``format`` in the keypoints term's options.

    Raises:
        FitInputError: an unknown format, or no keypoints term in ``terms``.
    """
    options = config.get("term_options")
    if "keypoints" not in terms:
        raise FitInputError(f"keypoint_format given, but data_term={list(terms)} has no "
                            "keypoints term")
    if options is not None and not isinstance(options, Mapping):
        return config  # fit_config names the bad setting
    try:
        return {**config, "term_options": options_with_format(keypoint_format, options)}
    except ValueError as error:
        raise FitInputError(f"keypoint_format: {error}") from None


def _input_keywords() -> set[str]:
    """The ``fit`` keywords of all registered data terms."""
    return set(term_keywords().values())
