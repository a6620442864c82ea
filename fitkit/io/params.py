"""Parameter files (``init.npz``, ``gt.npz``, ``results.npz``): one row per image.

Layout (``docs/formats.md``): ``image_names`` (N,) str, ``global_orient`` (N, 3),
``body_pose`` (N, 69), ``betas`` (N, 10), ``transl`` (N, 3), ``focal_length`` (N, 2),
``camera_center`` (N, 2), float32. Other keys are allowed and kept (e.g. per-image energies or
flags of a results file) when their first dimension is N.

- Camera keys may be missing when the reader is given the image size: the defaults are
  fitkit's default camera, focal length ``sqrt(w^2 + h^2)`` for both axes and principal point
  ``((w - 1) / 2, (h - 1) / 2)`` (the image centre, pixel centres at integers).
- Non-finite values are kept as they are (a results file may hold NaN rows for images whose fit
  failed, flagged by an extra key); the reader checks layout, not plausibility.
- ``image_names`` must be unique: they key the rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from fitkit.geometry.camera import default_intrinsics
from fitkit.io.npz import FileKeyError, read_npz
from fitkit.io.runs import write_npz


@dataclass
class BodyParams:
    """The SMPL body parameters of a batch: the one list of their names and sizes.

    Attributes:
        global_orient: ``(B, 3)`` axis-angle root rotation.
        body_pose: ``(B, 69)`` axis-angle rotations of the 23 other joints.
        betas: ``(B, 10)`` shape coefficients.
        transl: ``(B, 3)`` translation in meters (camera frame of the full image).
    """

    global_orient: Tensor
    body_pose: Tensor
    betas: Tensor
    transl: Tensor

    SIZES: ClassVar[dict[str, int]] = {"global_orient": 3, "body_pose": 69, "betas": 10,
                                        "transl": 3}
    """Per-row size of each parameter, in the order of the fields."""

    @classmethod
    def zeros(cls, batch_size: int, **like: Any) -> BodyParams:
        """All-zero parameters of ``batch_size`` rows (``like``: ``device``, ``dtype``)."""
        return cls(**{name: torch.zeros(batch_size, size, **like)
                      for name, size in cls.SIZES.items()})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **like: Any) -> BodyParams:
        """The parameters of a mapping that holds all four (other keys are ignored), as tensors
        (``like``: ``device``, ``dtype``)."""
        return cls(**{name: torch.as_tensor(values[name]).to(**like) for name in cls.SIZES})

    def as_dict(self) -> dict[str, Tensor]:
        """``{name: (B, size)}`` in field order."""
        return {name: getattr(self, name) for name in self.SIZES}


PARAM_SIZES: dict[str, int] = BodyParams.SIZES
"""Size of each body parameter (one row per sample): :attr:`BodyParams.SIZES`."""

CAMERA_SIZES: dict[str, int] = {"focal_length": 2, "camera_center": 2}
"""Size of each camera key of a parameter file."""

CAMERA_KEYS = tuple(CAMERA_SIZES)

PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    key: (size,) for key, size in {**PARAM_SIZES, **CAMERA_SIZES}.items()
}
"""Per-row shape of each float key of a parameter file."""


class ParamsFileError(FileKeyError):
    """A parameter file (or dict) with a missing or malformed key (``.path``, ``.key``)."""


def read_params(
    path: str | os.PathLike,
    image_size: Sequence[float] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Read and validate a parameter file.

    Args:
        path: the ``.npz``.
        image_size: ``(2,)`` or ``(N, 2)`` image sizes ``(w, h)`` in pixels; only used to fill
            missing camera keys with the default camera.
    Returns:
        ``image_names`` ``(N,)`` str, the float32 arrays of ``PARAM_SHAPES`` ``(N, ...)``, and any
        extra keys of the file.
    Raises:
        FileNotFoundError: no such file.
        ParamsFileError: unreadable file, missing key, wrong shape or dtype, N disagreeing.
    """
    path = Path(path)
    arrays = read_npz(path, ParamsFileError, "parameter")
    if image_size is not None:
        arrays = _with_default_camera(arrays, image_size)
    return validate_params(arrays, path)


def write_params(path: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Validate and write a parameter file (atomically: a partial file never replaces a good one).

    Args:
        path: the ``.npz`` to write (parent folders are created).
        params: ``image_names`` (N,) and the keys of ``PARAM_SHAPES`` as arrays or tensors of
            shape ``(N, ...)``, plus optional extra keys with first dimension N.
    Raises:
        ParamsFileError: missing key, wrong shape or dtype, N disagreeing.
    """
    write_npz(path, validate_params(params, path))


def validate_params(params: Mapping[str, Any], source: str | os.PathLike) -> dict[str, np.ndarray]:
    """Check the layout of a parameter set and convert it to numpy.

    Args:
        params: key -> array, tensor or sequence (``image_names``: strings).
        source: the file, for error messages.
    Returns:
        ``image_names`` ``(N,)`` str, float32 ``(N, ...)`` arrays, and extra keys as numpy.
    Raises:
        ParamsFileError: missing key, wrong shape or dtype, N disagreeing, duplicate names.
    """
    if "image_names" not in params:
        raise ParamsFileError(source, "image_names", "missing")
    names = _numpy(params["image_names"])
    if names.ndim != 1 or (names.size and names.dtype.kind not in "US"):
        raise ParamsFileError(
            source, "image_names", f"expected (N,) strings, got {names.dtype} {names.shape}"
        )
    try:
        names = names.astype(str) if names.dtype.kind == "U" else np.char.decode(names, "utf-8")
    except (TypeError, UnicodeDecodeError) as error:
        raise ParamsFileError(source, "image_names", f"not readable as text ({error})") from None
    if len(set(names.tolist())) != len(names):
        raise ParamsFileError(source, "image_names", "names must be unique")
    count = len(names)
    result = {"image_names": names}
    for key, shape in PARAM_SHAPES.items():
        if key not in params:
            hint = " (give the image size to use the default camera)" if key in CAMERA_KEYS else ""
            raise ParamsFileError(source, key, f"missing{hint}")
        value = _numpy(params[key])
        if value.shape != (count, *shape):
            expected = ", ".join(map(str, (count, *shape)))
            raise ParamsFileError(
                source, key, f"expected shape ({expected}) (N from image_names), got {value.shape}"
            )
        if value.dtype.kind not in "fiu":
            raise ParamsFileError(source, key, f"expected numbers, got dtype {value.dtype}")
        result[key] = value.astype(np.float32)
    for key in (key for key in params if key not in result):  # the caller's order: files
        # written with extra keys are the same bytes in every process
        value = _numpy(params[key])
        if value.ndim == 0 or value.shape[0] != count:
            raise ParamsFileError(
                source, key, f"extra keys need one row per image ({count}), got {value.shape}"
            )
        result[key] = value
    return result


def _with_default_camera(
    arrays: dict[str, np.ndarray], image_size: Sequence[float] | np.ndarray
) -> dict[str, np.ndarray]:
    """``arrays`` with missing camera keys filled from the image size."""
    if all(key in arrays for key in CAMERA_KEYS) or "image_names" not in arrays:
        return arrays
    count = len(arrays["image_names"])
    size = np.asarray(image_size, dtype=np.float64)
    if size.shape not in ((2,), (count, 2)):
        raise ValueError(f"image_size must have shape (2,) or ({count}, 2), got {size.shape}")
    size = np.broadcast_to(size, (count, 2))
    focal, center = default_intrinsics(size)
    defaults = {"focal_length": focal, "camera_center": center}
    return {**defaults, **arrays}


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
