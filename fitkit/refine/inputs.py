"""One batch of a refine run: every data term's input read from the dataset folder through the
term's own reader (or predicted, or the exact field), and the batch's rows for its part file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitkit import terms
from fitkit.fitter import PREDICTED_TERMS, Fitter
from fitkit.fitting import FitResult
from fitkit.geometry import Camera
from fitkit.io.dataset import Dataset
from fitkit.io.inputs import FitInputError, image_sizes, read_images, read_keypoints
from fitkit.io.params import PARAM_SIZES
from fitkit.nets.predict import TEXTURE_MODES
from fitkit.nets.regressor import Regressor
from fitkit.regress import regress


def batch_inputs(
    dataset: Dataset, names: list[str], fitter: Fitter, errors: list[str],
    flow: str | None = None, texture: str | None = None, regressor: Regressor | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Sizes, initial parameters and every data term's input of one batch, read through the
    terms' own readers from their ``dataset_pattern`` files; per-sample problems go to
    ``errors`` and blank that sample's observations. With ``regressor`` (``--init regress``, a
    folder without ``init.npz``) the initial parameters are regressed (:func:`regressed_init`).
    Terms that link samples (the temporal term) read no files: their input comes from the
    folder's layout (:mod:`fitkit.refine.folders`)."""
    init = dataset.rows(names)
    sizes = image_sizes([dataset.image_path(name) for name in names], errors)
    if "camera_center" in init:  # an unreadable image: its size from its camera
        fallback = np.round(2.0 * init["camera_center"] + 1.0).astype(np.int64)
    else:  # (flagged bad_input either way)
        fallback = np.ones_like(sizes)
    sizes = np.where((sizes > 0).all(axis=1, keepdims=True), sizes, fallback)
    inputs: dict[str, Any] = {}
    for name, keyword in fitter.keywords.items():
        cls = terms.term_class(name)
        if cls.links_samples:
            continue
        if name == "flow" and flow == "exact":
            inputs[keyword] = exact_displacements(fitter, init, dataset.rows(names, "gt"), sizes)
        elif name in PREDICTED_TERMS and cls.dataset_pattern is None:
            inputs |= predicted_inputs(dataset, names, fitter, errors, texture)
        else:
            inputs[keyword] = cls.read(dataset.files(cls.dataset_pattern, names), errors)
    if regressor is not None:
        init = regressed_init(dataset, names, fitter, regressor, errors, inputs.get("keypoints"))
    bad = np.array([bool(message) for message in errors])
    for name, keyword in fitter.keywords.items():
        if keyword in inputs:
            inputs[keyword] = terms.term_class(name).blank(inputs[keyword], bad)
    if "images" in inputs:  # images to predict from: the bad ones get no targets
        inputs["usable"] = ~bad
    return sizes, init, inputs


def regressed_init(
    dataset: Dataset, names: list[str], fitter: Fitter, regressor: Regressor,
    errors: list[str], keypoints: Any = None,
) -> dict[str, np.ndarray]:
    """Initial parameters of one batch from the regressor (:func:`fitkit.regress.regress` on
    ``images/NAME.*``, default cameras): crops around the keypoints (the batch's keypoints input,
    else ``keypoints/NAME_keypoints.json`` when every image has one), else the whole image. An
    unreadable image is regressed blank and its message goes to ``errors``.

    Returns:
        ``global_orient``, ``body_pose``, ``betas``, ``transl``, ``focal_length``,
        ``camera_center``, ``(B, ...)`` float32.
    Raises:
        FitInputError: a regressor that reads keypoints, and an image without its file.
    """
    images = predicted_inputs(dataset, names, fitter, errors)["images"]
    if keypoints is None:
        files = dataset.files(terms.term_class("keypoints").dataset_pattern, names)
        missing = [path for path in files if not path.is_file()]
        if not missing:
            keypoints = read_keypoints(files, [""] * len(names))  # unreadable: whole image
        elif regressor.config.keypoint_format:
            raise FitInputError(f"--init regress: the regressor reads the person's "
                                f"{regressor.config.keypoint_format} keypoints besides the "
                                f"image; {missing[0]} is missing ({len(missing)} of the "
                                f"{len(names)} images of this batch lack theirs)")
    estimate = regress(images, keypoints=keypoints, net=regressor, device=fitter.device)
    arrays = estimate.as_arrays()
    del arrays["image_names"]
    return arrays


def predicted_inputs(
    dataset: Dataset, names: list[str], fitter: Fitter, errors: list[str],
    texture: str | None = None,
) -> dict[str, Any]:
    """What :meth:`fitkit.fitter.Fitter.fit` needs to predict flow: the images (an unreadable
    one is blank and its message goes to ``errors``) and the texture source.

    Args:
        texture: ``None``, ``estimate``, ``other`` (:data:`fitkit.nets.predict.TEXTURE_MODES`)
            or a folder of UV textures ``NAME.png`` (RGB, square, one size), one per image.
    Returns:
        ``{"images": B (H, W, 3) uint8 arrays, "texture": mode or (B, 3, T, T) tensor}``.
    Raises:
        FitInputError: textures of different sizes, a bad network checkpoint.
    """
    images = []
    for index, name in enumerate(names):
        try:
            images += read_images(dataset.image_path(name))
        except (FileNotFoundError, FitInputError) as error:
            errors[index] = errors[index] or str(error)
            images.append(None)
    shape = next((image.shape for image in images if image is not None), (64, 64, 3))
    images = [image if image is not None else np.zeros(shape, np.uint8) for image in images]
    source: str | torch.Tensor | None = texture
    if texture not in (None, *TEXTURE_MODES) and fitter.predictor(texture).uses_texture:
        source = read_textures(Path(texture), names, errors).to(fitter.device, fitter.body.dtype)
    return {"images": images, "texture": source}


def read_textures(folder: Path, names: list[str], errors: list[str]) -> torch.Tensor:
    """``(B, 3, T, T)`` RGB textures in [0, 1] from ``folder/NAME.png``; a missing or unreadable
    one is grey and its message goes to ``errors``.

    Raises:
        FitInputError: textures that are not square or not of one size.
    """
    textures: list[np.ndarray | None] = []
    for index, name in enumerate(names):
        try:
            textures += read_images(folder / f"{name}.png")
        except (FileNotFoundError, FitInputError) as error:
            errors[index] = errors[index] or f"texture: {error}"
            textures.append(None)
    shapes = {texture.shape for texture in textures if texture is not None}
    if len(shapes) > 1 or any(shape[0] != shape[1] for shape in shapes):
        raise FitInputError(f"textures in {folder} must be square and of one size, got "
                            f"{sorted(shape[:2] for shape in shapes)}")
    shape = shapes.pop() if shapes else (64, 64, 3)
    stack = np.stack([texture if texture is not None else np.full(shape, 128, np.uint8)
                      for texture in textures])
    return torch.as_tensor(stack).permute(0, 3, 1, 2).float() / 255.0


def exact_displacements(
    fitter: Fitter, init: dict[str, np.ndarray], gt: dict[str, np.ndarray], sizes: np.ndarray,
) -> np.ndarray:
    """The true displacement field of each sample (:func:`fitkit.terms.exact_displacements`):
    ``(B, 2, H, W)`` pixels from the render of its initial body to where the same surface points
    lie in the image (its ground-truth body projected), the flow term's upper bound.

    Raises:
        FitInputError: images of different sizes in one batch.
    """
    if not (sizes == sizes[0]).all():
        raise FitInputError("--flow exact needs images of one size in a batch")
    like = {"device": fitter.device, "dtype": fitter.body.dtype}
    camera = Camera(torch.as_tensor(init["focal_length"]), torch.as_tensor(init["camera_center"]),
                    torch.as_tensor(sizes, dtype=torch.float32)).to(**like)
    field = terms.exact_displacements(
        fitter.body,
        {key: torch.as_tensor(gt[key]).to(**like) for key in PARAM_SIZES},
        {key: torch.as_tensor(init[key]).to(**like) for key in PARAM_SIZES},
        camera,
    )
    return field.cpu().numpy()


def part_arrays(names: list[str], result: FitResult, errors: list[str]) -> dict[str, np.ndarray]:
    """One batch's rows: parameters, energies, flags, plausibility measures and error messages
    (:meth:`FitResult.as_arrays`).

    A sample's ``error`` is the message of its input files (``errors``) or else the solver's
    (``result.errors``: e.g. initial parameters that are not finite); ``flag_bad_input`` is set
    exactly when the sample has a message.
    """
    arrays = result.as_arrays(names)
    messages = [mine or str(theirs) for mine, theirs in zip(errors, result.errors, strict=True)]
    arrays["flag_bad_input"] = np.array([bool(message) for message in messages])
    arrays["error"] = np.array(messages, dtype=str)
    return arrays
