"""Inputs of a fit, from arrays, tensors or files: images, initial parameters, and the data
terms' observations (OpenPose keypoints, DensePose IUV images, displacements).

Readers take an optional ``errors`` list (one entry per sample): given one, a sample whose file is
missing or malformed gets an empty observation and its message in ``errors`` instead of stopping
the batch; without one, the first bad file raises.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from fitkit.io.openpose import NoPersonError, OpenPoseError, read_openpose
from fitkit.io.params import CAMERA_KEYS, PARAM_SIZES, read_params

ImageInput = str | os.PathLike | np.ndarray | Tensor | Sequence[str | os.PathLike]
"""Images: a path, a list of paths, or ``(H, W, 3)`` / ``(B, H, W, 3)`` arrays or tensors."""


class FitInputError(ValueError):
    """Inputs of a fit that cannot be used: wrong shapes, batch sizes that disagree, unknown
    names, an input the chosen data term needs but did not get."""


def as_paths(value: Any) -> list[Path] | None:
    """``value`` as a list of paths if it is a path or a sequence of paths, else ``None``."""
    if isinstance(value, str | os.PathLike):
        return [Path(value)]
    if isinstance(value, list | tuple) and value and all(
        isinstance(item, str | os.PathLike) for item in value
    ):
        return [Path(item) for item in value]
    return None


def record_error(errors: list[str] | None, index: int, error: Exception) -> None:
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
    paths = as_paths(images)
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
                record_error(errors, index, error)
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
    paths = as_paths(images)
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
    init: str | os.PathLike | Mapping[str, Any] | Any | None,
    sizes: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Initial parameters as float32 arrays.

    Args:
        init: a parameter ``.npz`` (``docs/formats.md``), a dict of arrays or tensors (any of
            ``global_orient``, ``body_pose``, ``betas``, ``transl``, ``focal_length``,
            ``camera_center``, ``image_names``), anything with such a ``params`` dict (a
            :class:`fitkit.fitting.FitResult`), or ``None``.
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
    if hasattr(init, "params") and not isinstance(init, Mapping):
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
    paths = as_paths(keypoints)
    if paths is not None:
        result = np.zeros((len(paths), 25, 3), dtype=np.float32)
        for index, path in enumerate(paths):
            try:
                result[index] = read_openpose(path)
            except NoPersonError:
                continue
            except (FileNotFoundError, OpenPoseError) as error:
                record_error(errors, index, error)
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
    paths = as_paths(iuv)
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
                record_error(errors, index, error)
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
