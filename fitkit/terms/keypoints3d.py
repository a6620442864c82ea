"""The 3D keypoints data term: 3D joints or surface markers against the posed body.

For mocap markers, triangulated multi-view detections or any other 3D estimate of the body's
points (mmhuman3d's ``smplify3d``). Energy of sample b::

    E_b = sum_k  w_k c_bk^2  sum_{x,y,z} GM(X_bk - x_bk; rho)

with ``X_bk`` the body's keypoints of the chosen set (``smpl24`` joints, the body's ``markers``
or ``openpose25``), ``x_bk`` and ``c_bk`` the observed position (meters, in the camera frame of
the fit, the frame of the body output) and confidence, ``w_k`` the per-keypoint weight and ``GM``
the Geman-McClure error (:func:`~fitkit.terms.base.geman_mcclure`) applied to each coordinate,
as the 2D terms apply it to each pixel coordinate; ``rho = None`` gives the plain squared
distance. The default ``rho`` is 0.1 m: triangulation and marker-placement errors of a few
centimetres stay in the quadratic range (at 5 cm GM is 80 % of the squared error), while a
mislabelled marker or a triangulation outlier half a metre off costs less than ``rho^2`` per
coordinate (the squared error of 10 cm) instead of 0.25 m^2. (mmhuman3d's ``sigma=100`` in
meters is the plain squared error.) A gross start is the camera stage's job:
:meth:`Keypoints3DTerm.torso` is not robust.

Weight: in square meters the energy is about 10^4 times smaller than the 2D terms' energy in
(224-pixel crop) pixels, where a pixel is about a centimetre of the person. Next to the pose and
shape priors of the presets, ``term_weights={"keypoints3d": 100}`` (residuals in centimetres)
balances them as the 2D keypoints are balanced; with weight 1 the prior wins.

Input: ``fit(..., keypoints3d=...)``, ``(B, K, 4)`` arrays ``(x, y, z, confidence)`` or ``.npz``
files holding ``keypoints3d`` ``(K, 4)`` and optionally ``keypoint_set`` (a string); in a dataset
folder ``keypoints3d/NAME.npz``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import OPENPOSE25_NAMES, SMPL_JOINT_NAMES, BodyModel, BodyOutput
from fitkit.geometry import Camera
from fitkit.io.inputs import FitInputError, as_paths, record_error
from fitkit.io.npz import FileKeyError, read_npz
from fitkit.terms.base import DataTerm, TermContext, geman_mcclure, register_term
from fitkit.terms.keypoints import TORSO_KEYPOINTS

__all__ = ["KEYPOINT_SETS_3D", "TORSO_POINTS", "Keypoints3DTerm", "read_keypoints3d"]

KEYPOINT_SETS_3D: tuple[str, ...] = ("smpl24", "markers", "openpose25")
"""The body keypoint sets the term fits. In :func:`read_keypoints3d`'s ``keypoint_set`` codes,
set ``KEYPOINT_SETS_3D[i]`` is ``i + 1`` (0: the input does not say)."""

SET_SIZES: dict[str, int] = {"smpl24": len(SMPL_JOINT_NAMES), "openpose25": len(OPENPOSE25_NAMES)}
"""Sizes of the sets that are the same for every body (a body has its own number of markers)."""

TORSO_POINTS: dict[str, tuple[str, ...]] = {
    "smpl24": ("pelvis", "left_hip", "right_hip", "spine1", "spine2", "spine3",
               "left_shoulder", "right_shoulder"),
    "openpose25": TORSO_KEYPOINTS,
}
"""Per keypoint set, the points of :meth:`Keypoints3DTerm.torso` (hips, spine, shoulders)."""


def read_keypoints3d(value: Any, errors: list[str] | None = None) -> dict[str, np.ndarray]:
    """3D keypoints from arrays, tensors or ``.npz`` files.

    Args:
        value: ``(B, K, 4)`` or ``(K, 4)`` array or tensor ``(x, y, z, confidence)``, or a path or
            list of paths to ``.npz`` files, each holding ``keypoints3d`` ``(K, 4)`` and
            optionally ``keypoint_set``, a string naming one of :data:`KEYPOINT_SETS_3D`.
        errors: per-sample error list (:mod:`fitkit.io.inputs`): a missing or malformed file
            gives an all-NaN sample (its K taken from the others; K = 0 when no file could be
            read) and its message here.
    Returns:
        ``keypoints3d`` ``(B, K, 4)`` float32 and ``keypoint_set`` ``(B,)`` int64, the set each
        sample's file names (code ``i + 1`` for ``KEYPOINT_SETS_3D[i]``, 0 when not named).
    Raises:
        FileNotFoundError: a missing file (without ``errors``).
        FitInputError: an array of the wrong shape; a malformed file (without ``errors``; the
            message names the file and key); files of different K or naming different sets.
    """
    paths = as_paths(value)
    if paths is None:
        array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or array.shape[-1] != 4 or array.dtype.kind not in "fiu":
            raise FitInputError(
                "keypoints3d must have shape (B, K, 4) or (K, 4): (x, y, z, confidence) in "
                f"meters, camera frame; got {array.dtype} {tuple(np.shape(value))}"
            )
        codes = np.zeros(len(array), dtype=np.int64)
        return {"keypoints3d": array.astype(np.float32), "keypoint_set": codes}
    samples: list[np.ndarray | None] = []
    codes = np.zeros(len(paths), dtype=np.int64)
    for index, path in enumerate(paths):
        sample = None
        try:
            sample, codes[index] = _read_file(path)
        except (FileNotFoundError, FitInputError) as error:
            record_error(errors, index, error)
        samples.append(sample)
    read = [(path, sample) for path, sample in zip(paths, samples, strict=True)
            if sample is not None]
    count = read[0][1].shape[0] if read else 0
    for path, sample in read:
        if sample.shape[0] != count:
            raise FitInputError(
                f"{path}: key 'keypoints3d': {sample.shape[0]} keypoints, but "
                f"{read[0][0]} has {count}; the files of a batch hold one keypoint set"
            )
    named = codes > 0
    if named.any() and (codes[named] != codes[named][0]).any():
        first = int(np.flatnonzero(named)[0])
        other = int(np.flatnonzero(named & (codes != codes[first]))[0])
        raise FitInputError(
            f"{paths[other]}: key 'keypoint_set': {KEYPOINT_SETS_3D[codes[other] - 1]!r}, but "
            f"{paths[first]} holds {KEYPOINT_SETS_3D[codes[first] - 1]!r}"
        )
    keypoints = np.full((len(paths), count, 4), np.nan, dtype=np.float32)
    for index, sample in enumerate(samples):
        if sample is not None:
            keypoints[index] = sample
    return {"keypoints3d": keypoints, "keypoint_set": codes}


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    """One ``.npz``: its ``(K, 4)`` keypoints and its set code (0 when it names none)."""
    try:
        arrays = read_npz(path, FileKeyError, "3D keypoints")
    except FileKeyError as error:
        raise FitInputError(str(error)) from None
    if "keypoints3d" not in arrays:
        raise FitInputError(f"{path}: key 'keypoints3d': missing")
    keypoints = arrays["keypoints3d"]
    if keypoints.ndim != 2 or keypoints.shape[1] != 4 or keypoints.dtype.kind not in "fiu":
        raise FitInputError(
            f"{path}: key 'keypoints3d': expected (K, 4) numbers (x, y, z, confidence), got "
            f"{keypoints.dtype} {keypoints.shape}"
        )
    code = 0
    if "keypoint_set" in arrays:
        name = arrays["keypoint_set"]
        if name.ndim != 0 or name.dtype.kind != "U" or str(name) not in KEYPOINT_SETS_3D:
            raise FitInputError(
                f"{path}: key 'keypoint_set': expected one of {', '.join(KEYPOINT_SETS_3D)}, "
                f"got {name.dtype} {name!r}"
            )
        name = str(name)
        if SET_SIZES.get(name, len(keypoints)) != len(keypoints):
            raise FitInputError(
                f"{path}: key 'keypoints3d': {name!r} has {SET_SIZES[name]} keypoints, got "
                f"{len(keypoints)}"
            )
        code = KEYPOINT_SETS_3D.index(name) + 1
    return keypoints.astype(np.float32), code


@register_term("keypoints3d")
class Keypoints3DTerm(DataTerm):
    """Robust 3D distance between the body's keypoints and observed 3D points (module
    docstring).

    A keypoint is used when its position and confidence are finite and its confidence is
    positive; a sample without any such keypoint is invalid (zero energy, ``valid`` False). The
    camera only fixes the batch: the points are in the camera frame already.

    Args:
        keypoints: ``(B, K, 4)`` ``(x, y, z, confidence)`` in meters, camera frame of the fit, in
            the order of the body's ``keypoint_set`` (K its size: 24, 25 or the body's markers;
            K = 0 for a batch where nothing could be read). NaN marks a missing keypoint.
        keypoint_set: ``"smpl24"``, ``"markers"`` or ``"openpose25"``.
        joint_weights: ``(K,)`` per-keypoint weights ``w_k``; default 1. (For triangulated
            OpenPose detections, :func:`fitkit.terms.default_joint_weights` turns off the points
            OpenPose places differently from SMPL.)
        rho: Geman-McClure scale in meters; ``None`` for the plain squared distance.
    Raises:
        ValueError: ``keypoints`` or ``joint_weights`` of the wrong shape, an unknown set.
    """

    keyword = "keypoints3d"
    batch_hint = 512  # joints and a few vertices (DataTerm.batch_hint)
    dataset_pattern = "keypoints3d/{name}.npz"

    @classmethod
    def read(cls, value: Any, errors: list[str] | None = None) -> dict[str, np.ndarray]:
        """``{"keypoints3d": (B, K, 4), "keypoint_set": (B,)}`` from arrays or ``.npz`` files
        (:func:`read_keypoints3d`)."""
        return read_keypoints3d(value, errors)

    @staticmethod
    def blank(observations: Any, bad: np.ndarray) -> Any:
        """:meth:`read`'s output with the samples ``bad`` ``(B,)`` bool made unusable (NaN
        keypoints); the set their files named stays, so the batch keeps its set."""
        if not isinstance(observations, Mapping):
            return DataTerm.blank(observations, bad)
        return {**observations, "keypoints3d": DataTerm.blank(observations["keypoints3d"], bad)}

    @classmethod
    def from_observations(cls, observations: Any, context: TermContext) -> Keypoints3DTerm:
        """The term from :meth:`read`'s output (or a ``(B, K, 4)`` tensor) and the context's
        options. The set the files name is the default ``keypoint_set``.

        Raises:
            FitInputError: the files name a set other than the ``keypoint_set`` option.
        """
        options = dict(context.options)
        if not isinstance(observations, Mapping):
            return cls(observations, **options)
        codes = {int(code) for code in observations["keypoint_set"].tolist() if code}
        if codes:
            named = KEYPOINT_SETS_3D[codes.pop() - 1]
            chosen = options.setdefault("keypoint_set", named)
            if chosen != named:
                raise FitInputError(
                    f"the keypoints3d files hold {named!r} keypoints, but the term's option is "
                    f"keypoint_set={chosen!r}"
                )
        return cls(observations["keypoints3d"], **options)

    def __init__(
        self,
        keypoints: Tensor | np.ndarray,
        keypoint_set: str = "smpl24",
        joint_weights: Tensor | np.ndarray | None = None,
        rho: float | None = 0.1,
    ) -> None:
        keypoints = torch.as_tensor(keypoints)
        if not keypoints.is_floating_point():
            keypoints = keypoints.to(torch.get_default_dtype())
        if keypoints.ndim != 3 or keypoints.shape[-1] != 4:
            raise ValueError(
                "keypoints must have shape (B, K, 4) (x, y, z, confidence), got "
                f"{tuple(keypoints.shape)}"
            )
        if keypoint_set not in KEYPOINT_SETS_3D:
            raise ValueError(
                f"keypoint_set must be one of {KEYPOINT_SETS_3D}, got {keypoint_set!r}"
            )
        count = keypoints.shape[1]
        if count and SET_SIZES.get(keypoint_set, count) != count:
            raise ValueError(
                f"keypoint_set {keypoint_set!r} has {SET_SIZES[keypoint_set]} keypoints, got "
                f"keypoints of shape {tuple(keypoints.shape)}"
            )
        if joint_weights is None:
            joint_weights = torch.ones(count)
        joint_weights = torch.as_tensor(joint_weights, dtype=keypoints.dtype)
        if joint_weights.shape != (count,):
            raise ValueError(
                f"joint_weights must have shape ({count},), got {tuple(joint_weights.shape)}"
            )
        self.keypoints = keypoints
        self.keypoint_set = keypoint_set
        self.joint_weights = joint_weights.to(keypoints.device)
        self.rho = rho
        confidence = keypoints[..., 3]
        self.used = keypoints.isfinite().all(dim=-1) & (confidence > 0)
        self.targets = torch.where(self.used[..., None], keypoints[..., :3], 0.0)
        self.weights = torch.where(self.used, confidence.square() * self.joint_weights, 0.0)
        self.valid = self.used.any(dim=-1)

    def body_vertices(self, body: BodyModel) -> Tensor | None:
        """The vertices of the body's :attr:`keypoint_set` (none for ``smpl24``)."""
        return body.selector.vertex_ids(self.keypoint_set)

    def points(self, body_output: BodyOutput) -> Tensor:
        """``(B, K, 3)`` the body's keypoints of :attr:`keypoint_set`, camera frame.

        Raises:
            ValueError: the body's set does not have K points (or the body lacks the set).
        """
        points = body_output.keypoints(self.keypoint_set)
        count = self.targets.shape[1]
        if count == 0:
            return points[:, :0]
        if points.shape[1] != count:
            raise ValueError(
                f"Keypoints3DTerm: the body's {self.keypoint_set!r} set has {points.shape[1]} "
                f"keypoints, the observations have {count}"
            )
        return points

    def energy(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """Robust 3D keypoint energy (module docstring).

        Args:
            body_output: posed bodies (batch B), camera frame.
            camera: the cameras (batch B; only checked for the batch size).
        Returns:
            ``(B,)`` energies, 0 for samples without used keypoints.
        """
        self.check_batch(body_output, camera)
        points = self.points(body_output)
        residual = points - self.targets.to(points.dtype)
        error = residual.square() if self.rho is None else geman_mcclure(residual, self.rho)
        return (error.sum(dim=-1) * self.weights.to(points.dtype)).sum(dim=-1)

    def torso(self) -> Keypoints3DTerm:
        """The camera stage's term: the hips, spine and shoulders (:data:`TORSO_POINTS`) with
        the plain squared distance; the whole term for ``markers`` (no torso is named)."""
        if self.keypoint_set not in TORSO_POINTS or not self.targets.shape[1]:
            return self
        names = SMPL_JOINT_NAMES if self.keypoint_set == "smpl24" else OPENPOSE25_NAMES
        torso = torch.zeros_like(self.joint_weights)
        torso[[names.index(name) for name in TORSO_POINTS[self.keypoint_set]]] = 1.0
        return Keypoints3DTerm(
            self.keypoints, self.keypoint_set, self.joint_weights * torso, rho=None
        )

    def estimate_transl(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """The translation that puts the centroid of the body's used keypoints on the centroid of
        their targets (zero for samples without used keypoints).

        Args:
            body_output: the initial bodies posed with zero translation (batch B).
            camera: the cameras (batch B).
        Returns:
            ``(B, 3)`` translations.
        """
        self.check_batch(body_output, camera)
        points = self.points(body_output).detach()
        used = self.used.to(points.dtype)[..., None]
        count = used.sum(dim=1).clamp(min=1.0)
        offset = (self.targets.to(points.dtype) - points) * used
        return offset.sum(dim=1) / count
