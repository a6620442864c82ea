"""Other tools' outputs as initial parameters: HMR 2.0 / 4DHumans, CameraHMR, NLF and a
generic ``pose, betas, transl, K`` layout, read into fitkit's parameter layout
(``docs/formats.md``, section "Other tools' outputs as init").

The layout of a file (or dict) is told by its keys (:data:`INIT_LAYOUTS`, tried in order):

- **HMR 2.0** (``pred_cam`` or ``pred_cam_t_full``): SMPL parameters as rotation matrices
  under ``pred_smpl_params/`` (or ``pred_smpl_params.``, or top level): ``global_orient``
  (N, 1, 3, 3), ``body_pose`` (N, 23, 3, 3), ``betas`` (N, 10); the crop's weak-perspective
  camera ``pred_cam`` (N, 3) ``(s, tx, ty)`` with ``box_center`` (N, 2), ``box_size`` (N,) and
  ``img_size`` (N, 2) ``(W, H)`` — or the demo's full-frame translation ``pred_cam_t_full``
  (N, 3) with ``img_size``. HMR 2.0's full-frame camera has the focal length
  ``5000 / 256 * max(W, H)`` (its crop focal length ``focal_length``, 5000 px, at 256 px crops)
  and its principal point at the image centre.
- **CameraHMR** (``cam_int``): ``pose`` (N, 72) axis-angle, ``shape`` (N, 10), ``cam_int``
  (N, 3, 3) or (3, 3) intrinsics, ``cam_t`` (N, 3) full-frame translation, optional ``imgname``
  (its ``center`` and ``scale`` are not needed: ``cam_t`` is already full-frame).
- **NLF / generic** (``pose``): ``pose`` (N, 72) axis-angle, (N, 24, 3) or (N, 24, 3, 3)
  rotation matrices, ``betas`` (N, 10), ``trans`` or ``transl`` (N, 3) meters, optional ``K``
  or ``intrinsic_matrix`` (N, 3, 3) or (3, 3); without intrinsics the fit uses fitkit's default
  camera.

Intrinsic matrices are taken as they stand, in fitkit's pixel convention (OpenCV's: pixel
centres at integers). HMR 2.0 has none: its full-frame camera is the one its demo renders with
(pyrender, principal point ``(W / 2, H / 2)`` with pixel *edges* at integers), which is fitkit's
image centre ``((W - 1) / 2, (H - 1) / 2)``; its box centres, in the detector's edge
convention, are read in the same way. Rotation matrices become axis-angle with
:func:`fitkit.geometry.matrix_to_axis_angle`. Names: ``image_names`` (stems, as fitkit writes
them) or CameraHMR's ``imgname`` (file names or paths: their stems); without either, rows go in
order. Non-finite values are kept (the fit flags those rows).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.geometry.camera import Camera, default_intrinsics
from fitkit.geometry.fullframe import weak_perspective_to_full_frame
from fitkit.geometry.rotations import matrix_to_axis_angle
from fitkit.io.npz import read_npz
from fitkit.io.params import CAMERA_KEYS, PARAM_SIZES, ParamsFileError, read_params

HMR2_FOCAL_LENGTH = 5000.0
"""HMR 2.0's focal length in pixels of its crops (``EXTRA.FOCAL_LENGTH``)."""

HMR2_CROP_SIZE = 256
"""HMR 2.0's crop side in pixels (``MODEL.IMAGE_SIZE`` of its released model)."""

ROTATION_TOLERANCE = 1e-3
"""Largest ``|R R^T - I|`` entry of a matrix read as a rotation."""

HMR2, CAMERAHMR, GENERIC = "HMR 2.0 / 4DHumans", "CameraHMR", "NLF / generic"
LAYOUT_KEYS: dict[str, str] = {
    HMR2: "pred_smpl_params/global_orient, pred_smpl_params/body_pose, pred_smpl_params/betas "
          "(or at the top level), pred_cam, box_center, box_size, img_size; or pred_cam_t_full "
          "and img_size in place of pred_cam and the box",
    CAMERAHMR: "pose, shape, cam_int, cam_t, optional imgname",
    GENERIC: "pose, betas, trans or transl, optional K or intrinsic_matrix, optional "
             "image_names",
}
"""The keys of each layout, for messages."""

Source = str | os.PathLike
Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class InitLayout:
    """One tool's output layout.

    Attributes:
        name: what the messages call it (``"HMR 2.0 / 4DHumans"``).
        keys: the keys it holds, for the message about a file of no known layout.
        matches: whether a set of keys is of this layout.
        convert: ``(arrays, source, image_size) -> fitkit's parameter arrays`` (float32
            ``(N, ...)`` and, when the file names its rows, ``image_names``); ``image_size``
            is ``(2,)`` or ``(N, 2)`` ``(W, H)`` or ``None``.
    """

    name: str
    keys: str
    matches: Callable[[Collection[str]], bool]
    convert: Callable[[Arrays, Source, np.ndarray | None], dict[str, np.ndarray]]


def read_init_file(
    path: Source, image_size: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """A file of initial parameters, in fitkit's layout or one of :data:`INIT_LAYOUTS`.

    Args:
        path: the ``.npz``.
        image_size: ``(2,)`` or ``(N, 2)`` image sizes ``(W, H)``: fills a fitkit file's missing
            camera keys (:func:`fitkit.io.read_params`) and an HMR 2.0 file's missing
            ``img_size``.
    Returns:
        fitkit's parameter arrays ``(N, ...)`` float32, with ``image_names`` when the file names
        its rows (a fitkit file's extra keys are kept, as :func:`fitkit.io.read_params` does).
    Raises:
        FileNotFoundError: no such file.
        ParamsFileError: unreadable, of no known layout (the layouts and their keys named), or
            a missing or malformed key (named).
    """
    arrays = read_npz(path, ParamsFileError, "parameter")
    converted = convert_init(arrays, path, image_size)
    if converted is not None:
        return converted
    if "image_names" in arrays or arrays.keys() & {*PARAM_SIZES, *CAMERA_KEYS}:
        return read_params(path, image_size=image_size)
    known = "; ".join(f"{layout.name} ({layout.keys})" for layout in INIT_LAYOUTS)
    raise ParamsFileError(
        path, None,
        "not a parameter file of a layout fitkit knows; looked for fitkit's (image_names, "
        f"{', '.join(PARAM_SIZES)}, optional {', '.join(CAMERA_KEYS)}); {known}; found keys "
        f"{', '.join(sorted(arrays)) or '(none)'}")


def convert_init(
    values: Mapping[str, Any], source: Source = "init", image_size: np.ndarray | None = None
) -> dict[str, np.ndarray] | None:
    """Initial parameters in another tool's layout (:data:`INIT_LAYOUTS`) as fitkit's.

    Args:
        values: key -> array or tensor; nested dicts (HMR 2.0's ``pred_smpl_params``) count as
            keys ``outer/inner``.
        source: the file, or ``"init"``, for messages.
        image_size: ``(2,)`` or ``(N, 2)`` ``(W, H)``, for an HMR 2.0 output without
            ``img_size``.
    Returns:
        fitkit's parameter arrays (:class:`InitLayout`), or ``None`` when no layout matches.
    Raises:
        ParamsFileError: a layout matches but a key is missing or malformed (named).
    """
    arrays = flatten_arrays(values)
    for layout in INIT_LAYOUTS:
        if layout.matches(arrays.keys()):
            return layout.convert(arrays, source, image_size)
    return None


def flatten_arrays(values: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """``values`` as numpy arrays, nested mappings flattened to ``outer/inner`` keys."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            arrays |= flatten_arrays(value, f"{prefix}{key}/")
        elif isinstance(value, Tensor):
            arrays[f"{prefix}{key}"] = value.detach().cpu().numpy()
        else:
            arrays[f"{prefix}{key}"] = np.asarray(value)
    return arrays


# --------------------------------------------------------------------------- the layouts


def _hmr2(arrays: Arrays, source: Source, image_size: np.ndarray | None) -> dict[str, np.ndarray]:
    """HMR 2.0 / 4DHumans (module docstring)."""
    rows = _Rows(arrays, source, HMR2)
    smpl = {name: _hmr2_key(arrays, name) for name in ("global_orient", "body_pose", "betas")}
    result = {
        "global_orient": rows.axis_angle(smpl["global_orient"], joints=1),
        "body_pose": rows.axis_angle(smpl["body_pose"], joints=23),
        "betas": rows.numbers(smpl["betas"], (PARAM_SIZES["betas"],)),
    }
    if "img_size" in arrays:
        size = rows.numbers("img_size", (2,), shared=True)
    elif image_size is not None:
        size = np.broadcast_to(np.asarray(image_size, np.float64), (rows.count, 2))
    else:
        raise ParamsFileError(source, "img_size", "missing: HMR 2.0's full-frame camera needs "
                              "the image size (W, H) (save batch['img_size'], or give images)")
    crop_focal = HMR2_FOCAL_LENGTH
    if "focal_length" in arrays:  # HMR 2.0's own output['focal_length']: the crop's
        crop_focal = rows.numbers("focal_length", (2,), shared=True)[:, :1]
    focal = np.broadcast_to(crop_focal / HMR2_CROP_SIZE * size.max(axis=1, keepdims=True),
                            (rows.count, 2))
    _, center = default_intrinsics(size)
    if "pred_cam_t_full" in arrays:
        transl = rows.numbers("pred_cam_t_full", (3,))
    else:
        weak = rows.numbers("pred_cam", (3,))
        box_center = rows.numbers("box_center", (2,)) - 0.5  # detector's pixel edges -> fitkit
        box_size = rows.numbers("box_size", ())
        camera = Camera(*(torch.as_tensor(np.ascontiguousarray(value))
                          for value in (focal, center, size)))
        transl = weak_perspective_to_full_frame(
            torch.as_tensor(weak), torch.as_tensor(box_center), torch.as_tensor(box_size),
            camera).numpy()
    result |= {"transl": transl, "focal_length": focal, "camera_center": center}
    return rows.finish(result)


def _hmr2_key(arrays: Arrays, name: str) -> str:
    """The key of HMR 2.0's SMPL parameter ``name``: under ``pred_smpl_params/``,
    ``pred_smpl_params.`` or at the top level (the first one named ``pred_smpl_params/...``
    when none is there)."""
    candidates = [f"pred_smpl_params/{name}", f"pred_smpl_params.{name}", name]
    return next((key for key in candidates if key in arrays), candidates[0])


def _camerahmr(arrays: Arrays, source: Source, _size: np.ndarray | None) -> dict[str, np.ndarray]:
    """CameraHMR (module docstring)."""
    rows = _Rows(arrays, source, CAMERAHMR)
    pose = rows.axis_angle("pose", joints=24)
    focal, center = rows.intrinsics("cam_int")
    result = {"global_orient": pose[:, :3], "body_pose": pose[:, 3:],
              "betas": rows.numbers("shape", (PARAM_SIZES["betas"],)),
              "transl": rows.numbers("cam_t", (3,)), "focal_length": focal,
              "camera_center": center}
    return rows.finish(result)


def _generic(arrays: Arrays, source: Source, _size: np.ndarray | None) -> dict[str, np.ndarray]:
    """NLF / generic (module docstring)."""
    rows = _Rows(arrays, source, GENERIC)
    pose = rows.axis_angle("pose", joints=24)
    transl = "transl" if "transl" in arrays or "trans" not in arrays else "trans"
    result = {"global_orient": pose[:, :3], "body_pose": pose[:, 3:],
              "betas": rows.numbers("betas", (PARAM_SIZES["betas"],)),
              "transl": rows.numbers(transl, (3,))}
    intrinsics = next((key for key in ("K", "intrinsic_matrix") if key in arrays), None)
    if intrinsics is not None:
        result["focal_length"], result["camera_center"] = rows.intrinsics(intrinsics)
    return rows.finish(result)


INIT_LAYOUTS: tuple[InitLayout, ...] = (
    InitLayout(HMR2, LAYOUT_KEYS[HMR2],
               lambda keys: "pred_cam" in keys or "pred_cam_t_full" in keys, _hmr2),
    InitLayout(CAMERAHMR, LAYOUT_KEYS[CAMERAHMR],
               lambda keys: "cam_int" in keys or {"cam_t", "shape"} <= set(keys), _camerahmr),
    InitLayout(GENERIC, LAYOUT_KEYS[GENERIC], lambda keys: "pose" in keys, _generic),
)
"""The layouts :func:`convert_init` knows, tried in this order."""


# --------------------------------------------------------------------------- checked rows


class _Rows:
    """Reads keys of one source as float64 rows, checking shapes, dtypes and that every key
    has the same number of rows ``N``."""

    def __init__(self, arrays: Arrays, source: Source, layout: str) -> None:
        self.arrays, self.source, self.layout = arrays, source, layout
        self.count: int | None = None
        self.counted_from = ""

    def array(self, key: str, what: str) -> np.ndarray:
        """The numbers of ``key`` (float64)."""
        if key not in self.arrays:
            raise ParamsFileError(self.source, key, f"missing: expected {what} (the "
                                  f"{self.layout} layout: {LAYOUT_KEYS[self.layout]})")
        value = np.asarray(self.arrays[key])
        if value.dtype.kind not in "fiub":
            raise ParamsFileError(self.source, key, f"expected numbers, got dtype {value.dtype}")
        return value.astype(np.float64)

    def rows(self, key: str, value: np.ndarray) -> np.ndarray:
        """``value`` after checking its first dimension against the other keys'."""
        if self.count is None:
            self.count, self.counted_from = value.shape[0], key
        elif value.shape[0] != self.count:
            raise ParamsFileError(self.source, key, f"{value.shape[0]} rows, but "
                                  f"{self.counted_from} has {self.count}")
        return value

    def numbers(self, key: str, shape: tuple[int, ...], shared: bool = False) -> np.ndarray:
        """``(N, *shape)`` numbers; ``shared``: a single ``shape`` row serves every row (and
        ``(N, 1)`` is accepted for ``shape == ()``)."""
        value = self.array(key, f"({', '.join(['N', *map(str, shape)])})")
        if not shape and value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        if shared and value.shape in (shape, (1, *shape)):
            return np.broadcast_to(value.reshape(shape), (self.count or 1, *shape))
        if value.ndim != len(shape) + 1 or value.shape[1:] != shape:
            expected = ", ".join(["N", *map(str, shape)])
            raise ParamsFileError(self.source, key,
                                  f"expected shape ({expected}), got {value.shape}")
        return self.rows(key, value)

    def axis_angle(self, key: str, joints: int) -> np.ndarray:
        """``(N, 3 joints)`` axis-angle from ``(N, 3 joints)`` or ``(N, joints, 3)`` axis-angle
        or ``(N, joints, 3, 3)`` (``(N, 3, 3)`` for one joint) rotation matrices."""
        what = (f"(N, {3 * joints}) or (N, {joints}, 3) axis-angle, or (N, {joints}, 3, 3) "
                "rotation matrices")
        value = self.array(key, what)
        if joints == 1 and value.ndim == 3 and value.shape[1:] == (3, 3):
            value = value[:, None]
        if value.ndim == 4 and value.shape[1:] == (joints, 3, 3):
            self.rows(key, value)
            return matrices_to_axis_angle(value, key, self.source)
        if value.ndim == 3 and value.shape[1:] == (joints, 3):
            value = value.reshape(len(value), -1)
        if value.ndim != 2 or value.shape[1] != 3 * joints:
            raise ParamsFileError(self.source, key, f"expected {what}, got {value.shape}")
        return self.rows(key, value)

    def intrinsics(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Focal lengths and principal points ``(N, 2)`` each of ``(N, 3, 3)`` or ``(3, 3)``
        intrinsic matrices ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``."""
        matrix = self.numbers(key, (3, 3), shared=True)
        pattern = np.concatenate([matrix[:, [0, 1, 2, 2], [1, 0, 0, 1]], matrix[:, 2:, 2] - 1],
                                 axis=1)  # K01, K10, K20, K21, K22 - 1: all zero
        bad = np.isfinite(matrix).all(axis=(1, 2)) & (np.abs(pattern) > 1e-6).any(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ParamsFileError(self.source, key, f"row {row} is not a pinhole intrinsic matrix "
                                  "[[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew): "
                                  f"{matrix[row].tolist()}")
        return matrix[:, [0, 1], [0, 1]], matrix[:, [0, 1], [2, 2]]

    def finish(self, result: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``result`` as float32 ``(N, ...)`` arrays, with the source's ``image_names``."""
        count = self.count if self.count is not None else 0
        arrays = {key: np.ascontiguousarray(np.broadcast_to(value, (count, *value.shape[1:])),
                                            dtype=np.float32)
                  for key, value in result.items()}
        names = self.names(count)
        if names is not None:
            arrays["image_names"] = names
        return arrays

    def names(self, count: int) -> np.ndarray | None:
        """``image_names`` as they are or ``imgname``'s stems, checked: ``(N,)`` unique."""
        key = next((key for key in ("image_names", "imgname") if key in self.arrays), None)
        if key is None:
            return None
        value = np.asarray(self.arrays[key])
        if value.shape != (count,) or (value.size and value.dtype.kind not in "US"):
            raise ParamsFileError(self.source, key,
                                  f"expected ({count},) strings, got {value.dtype} {value.shape}")
        names = value.astype(str).tolist()
        if key == "imgname":
            names = [Path(name).stem for name in names]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ParamsFileError(
                self.source, key, f"names repeat ({', '.join(map(repr, repeated[:5]))}): "
                "fitkit fits one body per image; keep one row per image")
        return np.array(names, dtype=str)


def matrices_to_axis_angle(matrices: np.ndarray, key: str, source: Source) -> np.ndarray:
    """``(N, J, 3, 3)`` rotation matrices as ``(N, 3 J)`` axis-angle (``matrix_to_axis_angle``).

    Raises:
        ParamsFileError: a finite matrix that is no rotation (``|R R^T - I|`` above
            :data:`ROTATION_TOLERANCE`, or a reflection).
    """
    finite = np.isfinite(matrices).all(axis=(-2, -1))
    error = np.abs(matrices @ np.swapaxes(matrices, -1, -2) - np.eye(3)).max(axis=(-2, -1))
    bad = finite & ((error > ROTATION_TOLERANCE) | (np.linalg.det(matrices) <= 0))
    if bad.any():
        row, joint = (int(index[0]) for index in np.nonzero(bad))
        raise ParamsFileError(source, key, f"row {row}, joint {joint} is not a rotation matrix "
                              f"(|R R^T - I| up to {error[row, joint]:.3g}, det "
                              f"{np.linalg.det(matrices[row, joint]):.3g})")
    axis_angle = matrix_to_axis_angle(torch.as_tensor(matrices)).numpy()
    return axis_angle.reshape(len(matrices), -1)
