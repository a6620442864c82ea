"""SPIN's dictionary of fits (seed 002): the best SMPLify fit found so far for every training
image, which supervises the regressor and improves while it trains.

**The rows.** One row per training image, in the parameter-file layout (``docs/formats.md``):
``image_names``, ``global_orient``, ``body_pose``, ``betas``, ``transl``, ``focal_length``,
``camera_center`` (the fit and the full image's camera), plus

    keypoint_loss  (N,) float32  the fit's 2D keypoint loss (:func:`keypoint_loss`); inf for an
                                 image without usable keypoints
    valid          (N,) bool     keypoint_loss < threshold: the fit may supervise the network
    updates        (N,) int32    how many times the row's fit was replaced

Fits are stored in the camera frame of the *un-augmented* full image, where SMPLify fits them.
Augmentation (:func:`augment_pose`) is applied to a copy when a fit becomes a training target,
and a network's estimate on an augmented crop is taken back (:func:`unaugment_pose`) before
SMPLify starts from it; a stored fit is never rotated back and forth, so a row that is not
replaced stays bit-for-bit what it was.

**Augmentation** (SPIN's): the crop is rotated in the image plane by ``angle`` degrees
(counter-clockwise as seen on the screen) and then, for some samples, mirrored left-right. The
rotation turns the global orientation about the camera's optical axis,
``R' = R_z(angle) R`` (:func:`in_plane_rotation`); the mirror swaps the left and right SMPL
joints (:data:`SMPL_FLIP_PERMUTATION`) and negates the y and z components of every axis-angle
(``M R M`` with ``M = diag(-1, 1, 1)``). The mirror is its own inverse, exactly.

**The update rule** (SPIN's trainer): each step, the stored fit of every sample in the batch is
re-scored with the current keypoints and camera, SMPLify runs from the network's estimate, and
the stored fit is replaced only where the new fit's keypoint loss is lower (:meth:`update`). A
fit counts as valid below :data:`VALID_THRESHOLD` (SPIN's ``smplify_threshold``); a fit whose
``|betas|`` exceed :data:`BETAS_LIMIT` anywhere supervises with zero betas (:meth:`targets`).

**Files.** :meth:`FitsDictionary.write` is atomic (:func:`fitkit.io.runs.write_npz`,
reproducible bytes: the same dictionary gives the same file on any rank or machine);
:meth:`FitsDictionary.read` checks the layout (the file, key and row named). A training run
keeps the dictionary inside each checkpoint (:meth:`state_dict`), so a resumed run continues
from the dictionary that belongs to its weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import SMPL_JOINT_NAMES, BodyOutput
from fitkit.geometry import Camera, axis_angle_to_matrix, matrix_to_axis_angle
from fitkit.io.dataset import check_names
from fitkit.io.params import CAMERA_KEYS, PARAM_SIZES, ParamsFileError, read_params, validate_params
from fitkit.io.runs import write_npz
from fitkit.synth.scene import axis_rotations
from fitkit.terms.reprojection import ReprojectionTerm

VALID_THRESHOLD = 100.0
"""Largest keypoint loss of a fit that may supervise the network (SPIN's default
``smplify_threshold``). The loss is measured as SPIN's, in pixels of a 224-pixel crop around
the person (:func:`keypoint_loss`)."""

BETAS_LIMIT = 3.0
"""A fit with any ``|beta_k|`` above this supervises with zero betas (SPIN's trainer)."""

FIT_PARAMS: tuple[str, ...] = tuple(PARAM_SIZES)
"""The body parameters of a row."""

EXTRA_KEYS: tuple[str, ...] = ("keypoint_loss", "valid", "updates")
"""The per-row keys a dictionary file holds besides the parameter-file layout."""


def mirror_permutation(names: Sequence[str]) -> list[int]:
    """For each named point, the index of the point that takes its place in a mirrored image:
    left and right swapped (``left_hip`` <-> ``right_hip``, ``LShoulder`` <-> ``RShoulder``),
    the others themselves (also a side without its partner in ``names``)."""
    swap = {"left": "right", "right": "left"}

    def mirrored(name: str) -> str:
        parts = name.split("_")
        if any(part in swap for part in parts):
            return "_".join(swap.get(part, part) for part in parts)
        if len(name) > 1 and name[0] in "LR" and name[1].isupper():
            return ("R" if name[0] == "L" else "L") + name[1:]
        return name

    names = list(names)
    return [names.index(mirrored(name)) if mirrored(name) in names else index
            for index, name in enumerate(names)]


SMPL_FLIP_PERMUTATION: tuple[int, ...] = tuple(mirror_permutation(SMPL_JOINT_NAMES))
"""For each of the 24 SMPL joints, the joint whose rotation it takes in a mirrored body."""


def in_plane_rotation(angle: Tensor) -> Tensor:
    """Rotations about the camera's optical axis that turn the image ``angle`` degrees
    counter-clockwise as seen on the screen (x right, y down).

    A camera-frame point ``X`` goes to ``R_z X``; its projection (through a principal point on
    the axis) turns by ``angle`` about the principal point, and so does a weak-perspective
    crop coordinate about the crop centre (:func:`rotate_crop_points`).

    Args:
        angle: ``(B,)`` degrees.
    Returns:
        ``(B, 3, 3)`` ``[[c, s, 0], [-s, c, 0], [0, 0, 1]]``, ``c = cos``, ``s = sin``.
    """
    return axis_rotations(2, -torch.deg2rad(angle))


def rotate_crop_points(points: Tensor, angle: Tensor) -> Tensor:
    """Turn 2D crop coordinates (or weak-perspective ``(tx, ty)``) about the crop centre as
    :func:`in_plane_rotation` turns the image.

    Args:
        points: ``(B, ..., 2)``; angle: ``(B,)`` degrees.
    Returns:
        ``(B, ..., 2)``.
    """
    rotation = in_plane_rotation(angle)[:, :2, :2].to(points.dtype)
    shape = points.shape
    flat = points.reshape(shape[0], -1, 2)
    return (flat @ rotation.transpose(1, 2)).reshape(shape)


def flip_pose(global_orient: Tensor, body_pose: Tensor,
              flip: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mirror bodies left-right: swap the left and right joints' rotations and negate the y and
    z components of every axis-angle (its own inverse, exactly).

    Args:
        global_orient: ``(B, 3)``; body_pose: ``(B, 69)`` axis-angle.
        flip: ``(B,)`` bool, the samples to mirror (default all).
    Returns:
        ``global_orient`` ``(B, 3)`` and ``body_pose`` ``(B, 69)``.
    """
    rotations = torch.cat([global_orient, body_pose], dim=-1).unflatten(-1, (-1, 3))
    signs = rotations.new_tensor([1.0, -1.0, -1.0])
    mirrored = rotations[:, list(SMPL_FLIP_PERMUTATION)] * signs
    if flip is not None:
        mirrored = torch.where(flip.to(torch.bool)[:, None, None], mirrored, rotations)
    return mirrored[:, 0], mirrored[:, 1:].flatten(1)


def rotate_global_orient(global_orient: Tensor, angle: Tensor) -> Tensor:
    """The global orientation of a body seen in an image turned by ``angle`` degrees
    (:func:`in_plane_rotation`): ``R' = R_z(angle) R``.

    Args:
        global_orient: ``(B, 3)`` axis-angle; angle: ``(B,)`` degrees.
    Returns:
        ``(B, 3)`` axis-angle (the input itself where ``angle`` is 0).
    """
    rotation = in_plane_rotation(angle).to(global_orient.dtype)
    turned = matrix_to_axis_angle(rotation @ axis_angle_to_matrix(global_orient))
    return torch.where((angle == 0)[:, None], global_orient, turned)


def augment_pose(global_orient: Tensor, body_pose: Tensor, angle: Tensor,
                 flip: Tensor) -> tuple[Tensor, Tensor]:
    """A fit as it appears in an augmented crop: turned by ``angle``, then mirrored where
    ``flip`` (SPIN's order).

    Args:
        global_orient: ``(B, 3)``; body_pose: ``(B, 69)``; angle: ``(B,)`` degrees;
            flip: ``(B,)`` bool.
    Returns:
        ``global_orient`` ``(B, 3)`` and ``body_pose`` ``(B, 69)``.
    """
    return flip_pose(rotate_global_orient(global_orient, angle), body_pose, flip)


def unaugment_pose(global_orient: Tensor, body_pose: Tensor, angle: Tensor,
                   flip: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`augment_pose`: an estimate made on an augmented crop, back in the
    un-augmented image (mirrored back, then turned by ``-angle``).

    Args:
        global_orient: ``(B, 3)``; body_pose: ``(B, 69)``; angle: ``(B,)`` degrees;
            flip: ``(B,)`` bool.
    Returns:
        ``global_orient`` ``(B, 3)`` and ``body_pose`` ``(B, 69)``.
    """
    global_orient, body_pose = flip_pose(global_orient, body_pose, flip)
    return rotate_global_orient(global_orient, -angle), body_pose


def keypoint_loss(term: ReprojectionTerm, output: BodyOutput, camera: Camera) -> Tensor:
    """A fit's 2D keypoint loss: the keypoints term's energy (robust, confidence-weighted,
    person-size scaled, :mod:`fitkit.terms.keypoints`) averaged over the term's keypoints, as
    SPIN's trainer averages its joints' reprojection loss.

    Args:
        term: the keypoints term of the B samples.
        output: their posed bodies (camera frame); camera: their cameras.
    Returns:
        ``(B,)``; inf for a sample without usable keypoints.
    """
    loss = term.energy(output, camera) / term.targets.shape[1]
    return torch.where(term.valid, loss, torch.inf)


def fit_targets(fits: Mapping[str, Tensor], loss: Tensor, angle: Tensor, flip: Tensor,
                threshold: float = VALID_THRESHOLD) -> dict[str, Tensor]:
    """Fits as training targets for augmented crops (SPIN's rules).

    Args:
        fits: ``global_orient`` ``(M, 3)``, ``body_pose`` ``(M, 69)``, ``betas`` ``(M, 10)``
            in the un-augmented frame; loss: ``(M,)`` their keypoint losses; angle: ``(M,)``
            degrees; flip: ``(M,)`` bool (:func:`augment_pose`); threshold: of a valid fit.
    Returns:
        ``global_orient``, ``body_pose`` (augmented), ``betas`` (zero where any ``|beta| >``
        :data:`BETAS_LIMIT`), ``valid`` ``(M,)`` bool (``loss < threshold``).
    """
    orient, pose = augment_pose(fits["global_orient"], fits["body_pose"], angle.cpu(),
                                flip.cpu())
    betas = fits["betas"]
    betas = torch.where((betas.abs() > BETAS_LIMIT).any(dim=-1, keepdim=True),
                        torch.zeros_like(betas), betas)
    return {"global_orient": orient, "body_pose": pose, "betas": betas,
            "valid": loss < threshold}


@dataclass
class FitsDictionary:
    """The fits of N training images (module doc).

    Attributes:
        names: the N image names.
        params: ``global_orient`` (N, 3), ``body_pose`` (N, 69), ``betas`` (N, 10),
            ``transl`` (N, 3), ``focal_length`` (N, 2), ``camera_center`` (N, 2), float32.
        keypoint_loss: ``(N,)`` float32 (:func:`keypoint_loss`).
        updates: ``(N,)`` int32, replacements per row.
        threshold: the keypoint loss below which a fit is valid.
    Raises:
        ValueError: rows that disagree in number, a missing parameter, a name that is not a
            plain file stem or is repeated.
    """

    names: list[str]
    params: dict[str, Tensor]
    keypoint_loss: Tensor
    updates: Tensor = field(default=None)  # type: ignore[assignment]
    threshold: float = VALID_THRESHOLD

    def __post_init__(self) -> None:
        count = len(self.names)
        check_names(self.names, "fits dictionary")
        if len(set(self.names)) != count:
            raise ValueError("fits dictionary: image names must be unique")
        missing = [key for key in (*FIT_PARAMS, *CAMERA_KEYS) if key not in self.params]
        if missing:
            raise ValueError(f"fits dictionary: missing parameters {missing}")
        self.params = {key: torch.as_tensor(self.params[key]).detach().to("cpu", torch.float32)
                       .clone() for key in (*FIT_PARAMS, *CAMERA_KEYS)}
        self.keypoint_loss = torch.as_tensor(self.keypoint_loss).detach().to(
            "cpu", torch.float32).clone()
        if self.updates is None:
            self.updates = torch.zeros(count, dtype=torch.int32)
        self.updates = torch.as_tensor(self.updates).to("cpu", torch.int32).clone()
        for key, value in {**self.params, "keypoint_loss": self.keypoint_loss,
                           "updates": self.updates}.items():
            if value.shape[0] != count:
                raise ValueError(f"fits dictionary: {key} has {value.shape[0]} rows, "
                                 f"image_names {count}")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ValueError(f"threshold must be a finite number > 0, got {self.threshold!r}")

    def __len__(self) -> int:
        """N, the rows."""
        return len(self.names)

    @property
    def valid(self) -> Tensor:
        """``(N,)`` bool: the fits whose keypoint loss is below the threshold."""
        return self.keypoint_loss < self.threshold

    def rows(self, rows: Tensor | Sequence[int]) -> dict[str, Tensor]:
        """Copies of the parameters of ``rows`` ``(M,)``, each ``(M, ...)``."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return {key: value[index].clone() for key, value in self.params.items()}

    def targets(self, rows: Tensor | Sequence[int], angle: Tensor,
                flip: Tensor) -> dict[str, Tensor]:
        """The stored fits of ``rows`` ``(M,)`` as training targets for augmented crops
        (:func:`fit_targets`; angle ``(M,)`` degrees, flip ``(M,)`` bool)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return fit_targets(self.rows(index), self.keypoint_loss[index], angle, flip,
                           self.threshold)

    def update(self, rows: Tensor | Sequence[int], params: Mapping[str, Tensor], loss: Tensor,
               rescored: Tensor | None = None) -> Tensor:
        """SPIN's update rule for a batch of new fits (in the un-augmented frame).

        First the stored fits of ``rows`` take their re-scored losses (``rescored``: the stored
        fits scored with the current keypoints and camera, :func:`keypoint_loss`); then each new
        fit, in order, replaces its row's fit where its loss is lower than the row's loss at
        that moment (a row met twice keeps the better of its two new fits).

        Args:
            rows: ``(M,)`` rows; params: ``global_orient``, ``body_pose``, ``betas``,
                ``transl`` ``(M, ...)`` (other keys are ignored); loss: ``(M,)`` the new fits'
                keypoint losses; rescored: ``(M,)`` or ``None`` (keep the stored losses).
        Returns:
            ``(M,)`` bool: the new fits that were stored.
        """
        index = torch.as_tensor(rows, dtype=torch.long).cpu()
        loss = loss.detach().to("cpu", torch.float32)
        if rescored is not None:
            self.keypoint_loss[index] = rescored.detach().to("cpu", torch.float32)
        values = {key: params[key].detach().to("cpu", torch.float32) for key in FIT_PARAMS}
        stored = torch.zeros(len(index), dtype=torch.bool)
        for position, row in enumerate(index.tolist()):
            if bool(loss[position] < self.keypoint_loss[row]):  # NaN never replaces
                for key in FIT_PARAMS:
                    self.params[key][row] = values[key][position]
                self.keypoint_loss[row] = loss[position]
                self.updates[row] += 1
                stored[position] = True
        return stored

    def arrays(self) -> dict[str, np.ndarray]:
        """The dictionary in the file layout (module doc)."""
        arrays: dict[str, Any] = {"image_names": np.array(self.names)}
        arrays |= {key: value.numpy() for key, value in self.params.items()}
        arrays |= {"keypoint_loss": self.keypoint_loss.numpy(), "valid": self.valid.numpy(),
                   "updates": self.updates.numpy()}
        return arrays

    def write(self, path: str | os.PathLike) -> Path:
        """Write the dictionary atomically (reproducible bytes).

        Returns:
            ``path``.
        """
        arrays = validate_params(self.arrays(), path)
        order = ("image_names", *FIT_PARAMS, *CAMERA_KEYS, *EXTRA_KEYS)  # fixed: same bytes
        return write_npz(path, {key: arrays[key] for key in order})

    @classmethod
    def read(cls, path: str | os.PathLike, threshold: float = VALID_THRESHOLD) -> FitsDictionary:
        """A dictionary file.

        Raises:
            FileNotFoundError: no such file.
            ParamsFileError: not the layout of the module doc (file and key named), or a
                ``keypoint_loss`` that is NaN (the row named).
        """
        arrays = read_params(path)
        for key in ("keypoint_loss", "updates"):
            if key not in arrays:
                raise ParamsFileError(path, key, "missing: not a fits dictionary")
            if arrays[key].ndim != 1:
                raise ParamsFileError(path, key, f"expected (N,), got {arrays[key].shape}")
        if arrays["keypoint_loss"].dtype.kind != "f":
            raise ParamsFileError(path, "keypoint_loss", "expected floats")
        bad = np.flatnonzero(np.isnan(arrays["keypoint_loss"]))
        if len(bad):
            raise ParamsFileError(path, "keypoint_loss", f"row {bad[0]} is NaN")
        return cls(arrays["image_names"].tolist(),
                   {key: torch.from_numpy(arrays[key]) for key in (*FIT_PARAMS, *CAMERA_KEYS)},
                   torch.from_numpy(arrays["keypoint_loss"].astype(np.float32)),
                   torch.from_numpy(arrays["updates"].astype(np.int32)), threshold)

    def state_dict(self) -> dict[str, Any]:
        """The dictionary as plain tensors, strings and numbers (what a checkpoint holds and
        ``torch.load(weights_only=True)`` reads back)."""
        return {"names": list(self.names), "params": {k: v.clone() for k, v in
                                                       self.params.items()},
                "keypoint_loss": self.keypoint_loss.clone(), "updates": self.updates.clone(),
                "threshold": self.threshold}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], where: str = "checkpoint") -> \
            FitsDictionary:
        """The dictionary :meth:`state_dict` gave.

        Raises:
            ValueError: a state without the fields of :meth:`state_dict` (``where`` named).
        """
        missing = [key for key in ("names", "params", "keypoint_loss", "updates", "threshold")
                   if key not in state]
        if missing:
            raise ValueError(f"{where}: the fits dictionary lacks {', '.join(missing)}")
        return cls(list(state["names"]), dict(state["params"]), state["keypoint_loss"],
                   state["updates"], float(state["threshold"]))
