"""The 2D keypoints data term: OpenPose BODY_25 detections against the projected body.

Energy of sample b (SMPLify's robust reprojection term in SPIN's form)::

    E_b = sum_k  w_k c_bk^2  sum_{x,y} GM(s_b (P(X_bk) - x_bk); rho)

with ``X_bk`` the body's ``openpose25`` keypoints, ``P`` the camera's projection, ``x_bk`` and
``c_bk`` the detected pixel position and confidence, ``w_k`` the per-keypoint weight and ``GM``
the Geman-McClure error (:func:`fitkit.terms.base.geman_mcclure`, ``rho`` = 100 px) applied to
each pixel coordinate.

``s_b`` measures residuals relative to the person's size in the image: with ``crop_size`` set,
residuals are expressed in the pixels of a square crop of that side around the person, the crop
box being 1.2 times the larger side of the bounding box of the confident keypoints (SPIN's and
HMR's crops). Weights tuned on SPIN's 224-pixel crops then carry over to full images of any
resolution; this is the "reprojection loss scaled by the size of the person" of seed 003 §4.1.
Without ``crop_size``, ``s_b = 1`` (residuals in image pixels, as SPIN on its crops).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fitkit.body import OPENPOSE25_NAMES, BodyOutput
from fitkit.geometry import Camera
from fitkit.terms.base import DataTerm, geman_mcclure, register_term

NUM_KEYPOINTS = len(OPENPOSE25_NAMES)

IGNORED_KEYPOINTS: tuple[str, ...] = ("Neck", "RHip", "LHip")
"""BODY_25 keypoints weighted 0 by default: OpenPose places them differently from the SMPL
joints that stand for them (SPIN's ``ign_joints``, SMPLify-X's ``joints_to_ign = [1, 9, 12]``)."""

TORSO_KEYPOINTS: tuple[str, ...] = ("RShoulder", "LShoulder", "RHip", "LHip")
"""The keypoints SMPLify's camera stage fits (shoulders and hips)."""

CROP_BOX_SCALE = 1.2
"""Side of the person's crop box over the larger side of the keypoints' bounding box (SPIN)."""


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
class KeypointsTerm(DataTerm):
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
        self.rho = rho
        self.crop_size = crop_size
        self.confidence_weighted = confidence_weighted

        confidence = keypoints[..., 2]
        used = keypoints.isfinite().all(dim=-1) & (confidence > 0)
        self.targets = torch.where(used[..., None], keypoints[..., :2], 0.0)
        strength = confidence.square() if confidence_weighted else torch.ones_like(confidence)
        self.weights = torch.where(used, strength * self.joint_weights, 0.0)
        self.used = used
        self.valid = used.any(dim=-1)
        self.scale = torch.ones_like(confidence[:, 0])
        if crop_size is not None:
            self.scale = crop_size / self.person_size(used)

    def person_size(self, used: Tensor) -> Tensor:
        """Side of the person's crop box: 1.2 x the larger side of the bounding box of the used
        keypoints, at least 1 pixel.

        Args:
            used: ``(B, 25)`` bool, the keypoints that count.
        Returns:
            ``(B,)`` pixels.
        """
        inf = torch.finfo(self.targets.dtype).max
        low = torch.where(used[..., None], self.targets, inf).amin(dim=1)
        high = torch.where(used[..., None], self.targets, -inf).amax(dim=1)
        side = (high - low).amax(dim=-1)
        return (CROP_BOX_SCALE * torch.where(self.valid, side, 0.0)).clamp(min=1.0)

    def energy(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """Robust reprojection energy (see the module docstring).

        Args:
            body_output: posed bodies (batch B) with an ``openpose25`` keypoint set.
            camera: cameras (batch B) in whose pixels the keypoints are given.
        Returns:
            ``(B,)`` energies.
        """
        self.check_batch(body_output, camera)
        projected = camera.project(body_output.keypoints("openpose25"))
        residual = (projected - self.targets) * self.scale[:, None, None]
        error = residual.square() if self.rho is None else geman_mcclure(residual, self.rho)
        return (error.sum(dim=-1) * self.weights).sum(dim=-1)

    def estimate_transl(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """SMPLify's initial translation, from similar triangles.

        Depth: focal length times the ratio of the torso's length on the body (shoulder to hip,
        each side whose two keypoints are used) to its length in the image; without such a side,
        the ratio of the keypoints' spreads (RMS distance to their centroid, 3D x-y vs. 2D);
        without any used keypoint, a 2 m body spanning the image height. Then ``x, y`` put the
        centroid of the used torso keypoints (of all used keypoints if no torso keypoint is
        used) on its detected position.

        Args:
            body_output: the initial bodies posed with zero translation (batch B).
            camera: the cameras (batch B).
        Returns:
            ``(B, 3)`` translations.
        """
        self.check_batch(body_output, camera)
        points = body_output.keypoints("openpose25").detach()
        targets, used = self.targets.to(points.dtype), self.used
        focal = camera.focal_length.mean(dim=-1)

        shoulders = [OPENPOSE25_NAMES.index(name) for name in ("RShoulder", "LShoulder")]
        hips = [OPENPOSE25_NAMES.index(name) for name in ("RHip", "LHip")]
        sides = (used[:, shoulders] & used[:, hips]).to(points.dtype)  # (B, 2)
        length_2d = ((targets[:, shoulders] - targets[:, hips]).norm(dim=-1) * sides).sum(-1)
        length_3d = ((points[:, shoulders] - points[:, hips]).norm(dim=-1) * sides).sum(-1)

        spread_2d = _spread(targets, used)
        spread_3d = _spread(points[..., :2], used)
        ratio = torch.where(
            length_2d > 0,
            length_3d / length_2d.clamp(min=1e-9),
            torch.where(
                spread_2d > 0,
                spread_3d / spread_2d.clamp(min=1e-9),
                2.0 / camera.image_size[:, 1],
            ),
        )
        depth = focal * ratio

        torso = used & (torso_joint_weights().to(used.device) > 0)
        anchor = torch.where(torso.any(dim=-1, keepdim=True), torso, used).to(points.dtype)
        count = anchor.sum(dim=-1, keepdim=True)
        center_2d = torch.where(
            count > 0,
            (targets * anchor[..., None]).sum(dim=1) / count.clamp(min=1),
            camera.principal_point,
        )
        center_3d = torch.where(
            count > 0,
            (points * anchor[..., None]).sum(dim=1) / count.clamp(min=1),
            points.mean(dim=1),
        )
        xy = (center_2d - camera.principal_point) / camera.focal_length * depth[:, None]
        return torch.cat([xy - center_3d[:, :2], (depth - center_3d[:, 2])[:, None]], dim=-1)

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


def _spread(points: Tensor, used: Tensor) -> Tensor:
    """RMS distance of the used points to their centroid: ``(B, K, D)``, ``(B, K)`` -> ``(B,)``."""
    weight = used.to(points.dtype)[..., None]
    count = weight.sum(dim=1).clamp(min=1)
    center = (points * weight).sum(dim=1) / count
    return (((points - center[:, None]).square() * weight).sum(dim=(1, 2)) / count[:, 0]).sqrt()
