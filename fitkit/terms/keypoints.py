"""The 2D keypoints data term: OpenPose BODY_25 detections against the projected body.

Energy of sample b (SMPLify's robust reprojection term in SPIN's form, through
:class:`~fitkit.terms.reprojection.ReprojectionTerm`)::

    E_b = sum_k  w_k c_bk^2  sum_{x,y} GM(s_b (P(X_bk) - x_bk); rho)

with ``X_bk`` the body's ``openpose25`` keypoints, ``P`` the camera's projection, ``x_bk`` and
``c_bk`` the detected pixel position and confidence, ``w_k`` the per-keypoint weight and ``GM``
the Geman-McClure error (``rho`` = 100 px) applied to each pixel coordinate. ``s_b`` is the
person-size scale of the reprojection base (residuals in pixels of a ``crop_size`` crop around
the person; 1 without ``crop_size``, residuals in image pixels as SPIN on its crops).

Input: ``fit(..., keypoints=...)``, ``(B, 25, 3)`` arrays or OpenPose JSON files; in a dataset
folder ``keypoints/NAME_keypoints.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import OPENPOSE25_NAMES, BodyModel, BodyOutput
from fitkit.io.inputs import read_keypoints
from fitkit.terms.base import register_term
from fitkit.terms.reprojection import CROP_BOX_SCALE, ReprojectionTerm

NUM_KEYPOINTS = len(OPENPOSE25_NAMES)

IGNORED_KEYPOINTS: tuple[str, ...] = ("Neck", "RHip", "LHip")
"""BODY_25 keypoints weighted 0 by default: OpenPose places them differently from the SMPL
joints that stand for them (SPIN's ``ign_joints``, SMPLify-X's ``joints_to_ign = [1, 9, 12]``)."""

TORSO_KEYPOINTS: tuple[str, ...] = ("RShoulder", "LShoulder", "RHip", "LHip")
"""The keypoints SMPLify's camera stage fits (shoulders and hips)."""

__all__ = ["CROP_BOX_SCALE", "KeypointsTerm", "default_joint_weights", "torso_joint_weights"]


def default_joint_weights() -> Tensor:
    """``(25,)`` weights: 1, and 0 for :data:`IGNORED_KEYPOINTS`."""
    weights = torch.ones(NUM_KEYPOINTS)
    weights[[OPENPOSE25_NAMES.index(name) for name in IGNORED_KEYPOINTS]] = 0.0
    return weights


def torso_joint_weights() -> Tensor:
    """``(25,)`` weights: 1 for :data:`TORSO_KEYPOINTS`, else 0."""
    weights = torch.zeros(NUM_KEYPOINTS)
    weights[[OPENPOSE25_NAMES.index(name) for name in TORSO_KEYPOINTS]] = 1.0
    return weights


@register_term("keypoints")
class KeypointsTerm(ReprojectionTerm):
    """Robust reprojection error of OpenPose BODY_25 keypoints.

    A keypoint is used when its position and confidence are finite and its confidence is
    positive; a sample without any such keypoint is invalid (zero energy, ``valid`` False).

    Args:
        keypoints: ``(B, 25, 3)`` detections ``(u, v, confidence)`` in pixels of the full image
            (or of the crop the camera describes), BODY_25 order; NaN marks a missing keypoint.
        joint_weights: ``(25,)`` per-keypoint weights ``w_k``; default
            :func:`default_joint_weights` (Neck and hips off).
        rho: Geman-McClure scale in (crop) pixels; ``None`` for the plain squared error.
        crop_size: measure residuals in pixels of a crop of this side around the person (see
            the module docstring); ``None`` for image pixels.
        confidence_weighted: weight keypoints by ``c^2``; if False every used keypoint weighs
            ``w_k``.
    Raises:
        ValueError: ``keypoints`` or ``joint_weights`` of the wrong shape.
    """

    keyword = "keypoints"
    dataset_pattern = "keypoints/{name}_keypoints.json"

    @classmethod
    def read(cls, value: Any, errors: list[str] | None = None) -> np.ndarray:
        """``(B, 25, 3)`` keypoints from arrays or OpenPose JSON files
        (:func:`fitkit.io.inputs.read_keypoints`)."""
        return read_keypoints(value, errors)

    def __init__(
        self,
        keypoints: Tensor | np.ndarray,
        joint_weights: Tensor | np.ndarray | None = None,
        rho: float | None = 100.0,
        crop_size: float | None = None,
        confidence_weighted: bool = True,
    ) -> None:
        keypoints = torch.as_tensor(keypoints)
        if not keypoints.is_floating_point():
            keypoints = keypoints.to(torch.get_default_dtype())
        if keypoints.ndim != 3 or keypoints.shape[1:] != (NUM_KEYPOINTS, 3):
            raise ValueError(
                f"keypoints must have shape (B, {NUM_KEYPOINTS}, 3) (u, v, confidence in "
                f"BODY_25 order), got {tuple(keypoints.shape)}"
            )
        if joint_weights is None:
            joint_weights = default_joint_weights()
        joint_weights = torch.as_tensor(joint_weights, dtype=keypoints.dtype)
        if joint_weights.shape != (NUM_KEYPOINTS,):
            raise ValueError(
                f"joint_weights must have shape ({NUM_KEYPOINTS},), "
                f"got {tuple(joint_weights.shape)}"
            )
        self.keypoints = keypoints
        self.joint_weights = joint_weights.to(keypoints.device)
        self.confidence_weighted = confidence_weighted
        confidence = keypoints[..., 2]
        used = keypoints.isfinite().all(dim=-1) & (confidence > 0)
        strength = confidence.square() if confidence_weighted else torch.ones_like(confidence)
        self.set_targets(keypoints[..., :2], used, strength * self.joint_weights, rho, crop_size)
        names = OPENPOSE25_NAMES.index
        self.length_pairs = ([names("RShoulder"), names("LShoulder")],
                             [names("RHip"), names("LHip")])
        self.anchor = torso_joint_weights().to(keypoints.device) > 0

    def points(self, body_output: BodyOutput) -> Tensor:
        """``(B, 25, 3)`` the body's ``openpose25`` keypoints."""
        return body_output.keypoints("openpose25")

    def body_vertices(self, body: BodyModel) -> Tensor | None:
        """The vertices of the body's ``openpose25`` set (11 of them: face and feet)."""
        return body.selector.vertex_ids("openpose25")

    def torso(self) -> KeypointsTerm:
        """SMPLify's camera-stage term: the shoulders and hips, plain squared error, not
        weighted by confidence (SPIN's ``camera_fitting_loss``); same person-size scaling."""
        return KeypointsTerm(
            self.keypoints,
            joint_weights=torso_joint_weights(),
            rho=None,
            crop_size=self.crop_size,
            confidence_weighted=False,
        )
