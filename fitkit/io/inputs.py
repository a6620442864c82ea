"""Inputs of a fit, from arrays, tensors or files: images, initial parameters, and the data
terms' observations (OpenPose keypoints, DensePose IUV images, displacements).

Readers take an optional ``errors`` list (one entry per sample): given one, a sample whose file is
missing or malformed gets an empty observation and its message in ``errors`` instead of stopping
the batch; without one, the first bad file raises.

Image files are opened with PIL. Every problem with one (not an image, truncated, larger than
:data:`MAX_IMAGE_PIXELS`, a mode fitkit cannot turn into a photo) is a :class:`FitInputError`
that names the file. Photos become 8-bit RGB: greyscale is repeated over the channels, 16-bit
samples are scaled by their bit depth (65535 -> 255), palettes are looked up, alpha is dropped
(as OpenCV's ``imread`` does).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from fitkit.io.adapters import convert_init, read_init_file
from fitkit.io.keypoint_formats import (
    KEYPOINT_FORMATS,
    KeypointFile,
    format_code,
    formats_summary,
    read_keypoint_file,
)
from fitkit.io.openpose import KeypointFileError, select_person
from fitkit.io.params import CAMERA_KEYS, PARAM_SIZES

ImageInput = str | os.PathLike | np.ndarray | Tensor | Sequence[str | os.PathLike]
"""Images: a path, a list of paths, or ``(H, W, 3)`` / ``(B, H, W, 3)`` arrays or tensors."""


MAX_IMAGE_PIXELS = 50_000_000
"""Largest image fitkit reads, in pixels (width x height; about 7071 x 7071). A larger file is
refused from its header, before it is decoded (a decompression bomb, or minutes and gigabytes of
work), with a :class:`FitInputError` naming it. Raise it here for larger photos (PIL itself
refuses files above twice its own ``Image.MAX_IMAGE_PIXELS``)."""

IUV_PARTS = 24
"""DensePose's body parts: an IUV image's part ids ``I`` lie in 0 (background) to 24."""


class FitInputError(ValueError):
    """Inputs of a fit that cannot be used: wrong shapes, batch sizes that disagree, unknown
    names, an input the chosen data term needs but did not get, an unreadable or oversized
    image."""


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
        errors: per-sample error list (module docstring); an unreadable or oversized file gets
            size 0.
    Returns:
        ``(B, 2)`` int ``(W, H)``.
    Raises:
        FileNotFoundError: a missing file (without ``errors``).
        FitInputError: an unreadable file, one larger than :data:`MAX_IMAGE_PIXELS` (without
            ``errors``), or an array of the wrong shape.
    """
    paths = as_paths(images)
    if paths is not None:
        sizes = np.zeros((len(paths), 2), dtype=np.int64)
        for index, path in enumerate(paths):
            try:
                if not path.is_file():
                    raise FileNotFoundError(f"image not found: {path}")
                with open_image(path) as image:
                    sizes[index] = image.size
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
    """Images as a list of ``(H, W, 3)`` uint8 RGB arrays.

    Files are converted as the module docstring says. Arrays: uint8 as they are, uint16 scaled
    by 65535 -> 255, floats read as [0, 1], other integers must lie in 0-255; a fourth channel
    (alpha) is dropped.

    Raises:
        FileNotFoundError: a missing file.
        FitInputError: an unreadable or oversized file (named), an array of the wrong shape or
            with values that are not pixel values (non-finite floats, integers outside 0-255).
    """
    paths = as_paths(images)
    if paths is not None:
        result = []
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"image not found: {path}")
            result.append(decode_rgb(path))
        return result
    if isinstance(images, list | tuple):
        return [image for item in images for image in read_images(item)]
    image_sizes(images)
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    return [np.ascontiguousarray(image[..., :3]) for image in pixel_values(array)]


def pixel_values(array: np.ndarray) -> np.ndarray:
    """``array`` (any shape) as uint8 pixel values: uint8 as it is, uint16 scaled by its bit
    depth, floats in [0, 1] scaled by 255 (clipped), other integers and booleans as they are
    when they lie in 0-255.

    Raises:
        FitInputError: non-finite floats, integers outside 0-255, or values that are no numbers.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return np.round(array / 257.0).astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise FitInputError(f"images: {int((~np.isfinite(array)).sum())} non-finite pixel "
                                "values (floats must lie in [0, 1])")
        return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.dtype.kind in "iub":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise FitInputError(
                f"images: {array.dtype} values from {array.min()} to {array.max()} are not 8-bit "
                "pixel values; give uint8 (0-255), uint16 (0-65535) or floats in [0, 1]")
        return array.astype(np.uint8)
    raise FitInputError(f"images: expected numbers, got dtype {array.dtype}")


DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
"""What PIL raises for a truncated or corrupt file while decoding it."""


@contextmanager
def open_image(path: str | os.PathLike) -> Iterator[Image.Image]:
    """``with open_image(path) as image``: ``path`` opened with PIL (its header read, nothing
    decoded yet) and checked against :data:`MAX_IMAGE_PIXELS`; an error PIL raises while the
    block decodes the image (:data:`DECODE_ERRORS`) becomes a :class:`FitInputError` too.

    Raises:
        FitInputError: not an image PIL reads, a truncated or corrupt file, or more than
            :data:`MAX_IMAGE_PIXELS` pixels (the file named).
    """
    path = Path(path)
    limit = (f"{path}: image too large{{}}: fitkit reads at most {MAX_IMAGE_PIXELS:,} pixels "
             "(fitkit.io.inputs.MAX_IMAGE_PIXELS)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise FitInputError(limit.format("")) from None
    except Exception as error:  # PIL raises many kinds for files that are no images
        raise FitInputError(unreadable(path, error)) from None
    with image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise FitInputError(limit.format(f" ({width} x {height})"))
        try:
            yield image
        except FitInputError:
            raise
        except DECODE_ERRORS as error:
            raise FitInputError(unreadable(path, error)) from None


def unreadable(path: Path, error: Exception) -> str:
    """The message for an image file PIL cannot read."""
    return f"{path}: not a readable image ({type(error).__name__}: {error})"


def sample_bits(image: Image.Image) -> int:
    """Bits per sample of an opened, not yet decoded image: 16 for 16-bit files (PIL opens a
    16-bit RGB PNG as 8-bit ``RGB`` and says so only in its decoder's raw mode), 32 for 32-bit
    integer or float images, else 8."""
    for tile in image.tile:
        raw = tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
        if isinstance(raw, str) and ";16" in raw:
            return 16
    if image.mode.startswith("I;16"):
        return 16
    return 32 if image.mode in ("I", "F") else 8


def decode_rgb(path: Path) -> np.ndarray:
    """The image file ``path`` as ``(H, W, 3)`` uint8 RGB (module docstring).

    Raises:
        FitInputError: unreadable, oversized, or 32-bit (integer or float) samples.
    """
    with open_image(path) as image:
        bits = sample_bits(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N") and bits == 16:
            grey = pixel_values(np.asarray(image).astype(np.uint16))
            return np.repeat(grey[..., None], 3, axis=2)
        if bits == 32:
            raise FitInputError(f"{path}: {image.mode} image with 32-bit samples: not a photo "
                                "(give 8- or 16-bit images)")
        if image.mode in ("P", "PA"):  # palette, perhaps with transparency: via RGBA
            image = image.convert("RGBA")
        return np.asarray(image.convert("RGB"))


def read_init(
    init: str | os.PathLike | Mapping[str, Any] | Any | None,
    sizes: np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Initial parameters as float32 arrays.

    Args:
        init: a parameter ``.npz`` in fitkit's layout (``docs/formats.md``) or in another
            tool's (HMR 2.0 / 4DHumans, CameraHMR, NLF or generic ``pose, betas, transl, K``:
            :mod:`fitkit.io.adapters`), a dict of arrays or tensors (any of ``global_orient``,
            ``body_pose``, ``betas``, ``transl``, ``focal_length``, ``camera_center``,
            ``image_names``; or another tool's output, nested dicts allowed), anything with
            such a ``params`` dict (a :class:`fitkit.fitting.FitResult`), or ``None``.
        sizes: ``(B, 2)`` image sizes, to fill missing camera keys of a file (and a missing
            ``img_size`` of an HMR 2.0 output) when the images have one size.
        names: image name stems; when given and ``init`` has ``image_names`` holding all of
            them, the rows are picked by name; holding none of them, rows go by position.
    Returns:
        The parameter and camera arrays ``(N, ...)``; ``image_names`` and a file's other keys
        (a results file's energies, flags and errors) are dropped. Values are not checked
        here: :meth:`fitkit.fitter.Fitter.fit` flags rows that cannot be fitted.
    Raises:
        FileNotFoundError: a missing file.
        FitInputError, fitkit.io.ParamsFileError: malformed content, a file of no known layout
            (the layouts looked for named); ``image_names`` that hold some of ``names`` but not
            all (which rows belong to which image is then unknown).
    """
    if init is None:
        return {}
    if hasattr(init, "params") and not isinstance(init, Mapping):
        init = init.params
    size = None
    if sizes is not None and len(sizes) and (sizes == sizes[0]).all():
        size = sizes[0]
    if isinstance(init, str | os.PathLike):
        arrays = read_init_file(init, image_size=size)
    elif (converted := convert_init(init, "init", size)) is not None:
        arrays = converted
    else:
        arrays = {}
        for key, value in init.items():
            if key == "image_names":
                arrays[key] = np.asarray(value).astype(str)
                continue
            if key not in PARAM_SIZES and key not in CAMERA_KEYS:
                raise FitInputError(
                    f"init: unknown key {key!r}; expected {', '.join((*PARAM_SIZES, *CAMERA_KEYS))}"
                    " (or another tool's output: fitkit.io.adapters)"
                )
            value = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            width = PARAM_SIZES.get(key, 2)
            if value.ndim == 1:
                value = value[None]
            if value.ndim != 2 or value.shape[1] != width:
                raise FitInputError(
                    f"init: {key} must have shape (B, {width}), got {tuple(value.shape)}"
                )
            if value.dtype.kind not in "fiub":
                raise FitInputError(f"init: {key} must hold numbers, got dtype {value.dtype}")
            arrays[key] = value.astype(np.float32)
    stored = arrays.pop("image_names", None)
    arrays = {key: value for key, value in arrays.items()
              if key in PARAM_SIZES or key in CAMERA_KEYS}
    if names is not None and stored is not None:
        rows = {name: row for row, name in enumerate(stored.tolist())}
        missing = [name for name in names if name not in rows]
        if not missing:
            picked = [rows[name] for name in names]
            arrays = {key: value[picked] for key, value in arrays.items()}
        elif len(missing) < len(names):
            source = init if isinstance(init, str | os.PathLike) else "init"
            raise FitInputError(
                f"{source}: image_names holds {len(names) - len(missing)} of the {len(names)} "
                f"images' names but not {', '.join(map(repr, missing[:5]))}"
                f"{' ...' if len(missing) > 5 else ''}: cannot tell which row is whose")
    return arrays


def read_keypoints(
    keypoints: Any, errors: list[str] | None = None
) -> dict[str, np.ndarray]:
    """2D keypoints of one of the formats of :mod:`fitkit.io.keypoint_formats` (OpenPose
    BODY_25, COCO-17, COCO-WholeBody, Halpe-26, H36M-17, MediaPipe Pose).

    Args:
        keypoints: ``(B, K, 3)`` or ``(K, 3)`` array or tensor ``(u, v, confidence)`` in pixels,
            K the point count of a format; or a JSON path or list of paths (the largest person
            of each file): OpenPose, mmpose (inferencer predictions or a demo's
            ``meta_info``/``instance_info``) or COCO results, recognized by their structure. A
            file that lists nobody gives all-zero keypoints (the sample is flagged ``no_data``).
        errors: per-sample error list (module docstring); a bad file gives all-zero keypoints.
    Returns:
        ``keypoints`` ``(B, K, 3)`` float32 and ``keypoint_format`` ``(B,)`` int64, the format
        each file names (:func:`fitkit.io.keypoint_formats.format_code`; 0 when it names none,
        as for arrays: the count then decides). K is 0 when no file could be read and none
        said its format.
    Raises:
        FileNotFoundError: a missing file (without ``errors``).
        fitkit.io.openpose.KeypointFileError: a malformed file (without ``errors``; the file
            and field named).
        FitInputError: an array of the wrong shape; files of different counts or formats.
    """
    paths = as_paths(keypoints)
    if paths is None:
        array = (keypoints.detach().cpu().numpy() if isinstance(keypoints, Tensor)
                 else np.asarray(keypoints))
        if array.ndim == 2:
            array = array[None]
        counts = {fmt.count for fmt in KEYPOINT_FORMATS.values()}
        if array.ndim != 3 or array.shape[-1] != 3 or array.shape[1] not in counts or (
                array.dtype.kind not in "fiu"):
            raise FitInputError(
                "keypoints must have shape (B, 25, 3) (OpenPose BODY_25) or (B, K, 3) with K the "
                f"points of another keypoint format ({formats_summary()}), or (K, 3): (u, v, "
                f"confidence); got {array.dtype} {tuple(np.shape(keypoints))}"
            )
        return {"keypoints": array.astype(np.float32),
                "keypoint_format": np.zeros(len(array), dtype=np.int64)}
    files: list[KeypointFile | None] = []
    for index, path in enumerate(paths):
        file = None
        try:
            file = read_keypoint_file(path)
        except (FileNotFoundError, KeypointFileError) as error:
            record_error(errors, index, error)
        files.append(file)
    read = [(path, file) for path, file in zip(paths, files, strict=True) if file is not None]
    for kind, value_of in (("keypoints per person", lambda file: file.people.shape[1]),
                           ("format", lambda file: file.format)):
        values = [(path, value_of(file)) for path, file in read if value_of(file)]
        for path, value in values[1:]:
            if value != values[0][1]:
                raise FitInputError(
                    f"{path}: {kind} {value!r}, but {values[0][0]} holds {values[0][1]!r}; the "
                    "keypoint files of a batch hold one format")
    count = next((file.people.shape[1] for _, file in read if file.people.shape[1]), 0)
    result = np.zeros((len(paths), count, 3), dtype=np.float32)
    codes = np.zeros(len(paths), dtype=np.int64)
    for index, file in enumerate(files):
        if file is None:
            continue
        codes[index] = format_code(file.format)
        if len(file.people):
            result[index] = file.people[select_person(file.people, source=paths[index])]
    return {"keypoints": result, "keypoint_format": codes}


def read_iuv(iuv: Any, errors: list[str] | None = None) -> np.ndarray:
    """DensePose IUV images as a ``(B, H, W, 3)`` uint8 array in DensePose's channel order
    ``(I, U * 255, V * 255)``.

    Args:
        iuv: ``(B, H, W, 3)`` or ``(H, W, 3)`` integer array or tensor ``(I, U, V)`` with values
            in 0-255, or ``*_IUV.png`` path(s) as DensePose writes them (8-bit RGB, with OpenCV,
            so the file's R, G, B hold V, U, I; they are flipped back here). All images must
            have one size.
        errors: per-sample error list (module docstring); a bad sample (unreadable, oversized,
            16-bit or not RGB, a part id ``I`` above :data:`IUV_PARTS`) gets an empty image.
    Raises:
        FileNotFoundError: a missing file (without ``errors``).
        FitInputError: a bad sample (without ``errors``; the file or the row named), a wrong
            shape or dtype, or images of different sizes.
    """
    paths = as_paths(iuv)
    if paths is not None:
        images: list[np.ndarray | None] = []
        for index, path in enumerate(paths):
            image = None
            try:
                if not path.is_file():
                    raise FileNotFoundError(f"DensePose IUV file not found: {path}")
                image = decode_iuv(path)
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
    if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > 255)):
        raise FitInputError("iuv must hold integers in 0-255 (I, U * 255, V * 255), got "
                            f"{array.dtype} values" + (f" from {array.min()} to {array.max()}"
                                                       if array.size else ""))
    array = np.array(array, dtype=np.uint8)
    for index, image in enumerate(array):
        try:
            check_parts(image, f"iuv[{index}]")
        except FitInputError as error:
            record_error(errors, index, error)
            image[...] = 0
    return array


def decode_iuv(path: Path) -> np.ndarray:
    """A DensePose ``*_IUV.png`` file as ``(H, W, 3)`` uint8 ``(I, U, V)``.

    Raises:
        FitInputError: unreadable, oversized, not 8-bit RGB, or a part id above
            :data:`IUV_PARTS`.
    """
    with open_image(path) as file:
        bits = sample_bits(file)
        if file.mode != "RGB" or bits != 8:
            raise FitInputError(
                f"{path}: a DensePose IUV image must be 8-bit RGB (as DensePose writes it), got "
                f"{bits}-bit {file.mode}")
        image = np.ascontiguousarray(np.asarray(file)[..., ::-1])
    return check_parts(image, f"{path}")


def check_parts(image: np.ndarray, source: str) -> np.ndarray:
    """``image`` ``(H, W, 3)`` ``(I, U, V)``, after checking its part ids.

    Raises:
        FitInputError: a part id ``I`` above :data:`IUV_PARTS` (``source`` named).
    """
    top = int(image[..., 0].max()) if image.size else 0
    if top > IUV_PARTS:
        raise FitInputError(
            f"{source}: DensePose part id I = {top} > {IUV_PARTS} (in a file, I is the blue "
            "channel: DensePose writes B, G, R = I, U, V)")
    return image


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
