"""The 2D keypoints data term: a 2D detector's keypoints against the projected body.

Energy of sample b (SMPLify's robust reprojection term in SPIN's form, through
:class:`~fitkit.terms.reprojection.ReprojectionTerm`)::

    E_b = sum_k  w_k c_bk^2  sum_{x,y} GM(s_b (P(X_bk) - x_bk); rho)

with ``X_bk`` the body's keypoints of the detector's format (``openpose25`` for BODY_25), ``P``
the camera's projection, ``x_bk`` and ``c_bk`` the detected pixel position and confidence,
``w_k`` the per-keypoint weight and ``GM`` the Geman-McClure error (``rho`` = 100 px) applied to
each pixel coordinate. ``s_b`` is the person-size scale of the reprojection base (residuals in
pixels of a ``crop_size`` crop around the person; 1 without ``crop_size``, residuals in image
pixels as SPIN on its crops).

Formats (:mod:`fitkit.io.keypoint_formats`): OpenPose BODY_25 (the default), COCO-17,
COCO-WholeBody, Halpe-26, H36M-17 and MediaPipe Pose. The format is the term option ``format``
(``term_options={"keypoints": {"format": "coco17"}}`` or ``fit(..., keypoint_format="coco17")``),
else the one the files name, else the one of the point count K (17 is COCO-17). Points the body
cannot place (fingers, the face contour, the head top) are not scored; each format's default
weights say how far the detector's points are from the body's.

Input: ``fit(..., keypoints=...)``, ``(B, K, 3)`` arrays or JSON files of OpenPose, mmpose or the
COCO results layout; in a dataset folder ``keypoints/NAME_keypoints.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput
from fitkit.io.inputs import FitInputError, read_keypoints
from fitkit.io.keypoint_formats import KEYPOINT_FORMATS, keypoint_format, resolve_format
from fitkit.terms.base import TermContext, register_term
from fitkit.terms.reprojection import CROP_BOX_SCALE, ReprojectionTerm

BODY25 = KEYPOINT_FORMATS["body25"]

NUM_KEYPOINTS = BODY25.count

IGNORED_KEYPOINTS: tuple[str, ...] = tuple(
    name for name, weight in zip(BODY25.names, BODY25.weights, strict=True) if weight == 0)
"""BODY_25 keypoints weighted 0 by default: OpenPose places them differently from the SMPL
joints that stand for them (SPIN's ``ign_joints``, SMPLify-X's ``joints_to_ign = [1, 9, 12]``)."""

TORSO_KEYPOINTS: tuple[str, ...] = BODY25.torso
"""The keypoints SMPLify's camera stage fits (shoulders and hips)."""

__all__ = ["CROP_BOX_SCALE", "KeypointsTerm", "default_joint_weights", "options_with_format",
           "torso_joint_weights"]


def default_joint_weights(format: str = "body25") -> Tensor:
    """``(K,)`` the default weights of a format's points (:mod:`fitkit.io.keypoint_formats`);
    for BODY_25 1, and 0 for :data:`IGNORED_KEYPOINTS`."""
    return torch.tensor(keypoint_format(format).weights)


def torso_joint_weights(format: str = "body25") -> Tensor:
    """``(K,)`` weights: 1 for the format's shoulders and hips (:data:`TORSO_KEYPOINTS` for
    BODY_25), else 0."""
    fmt = keypoint_format(format)
    weights = torch.zeros(fmt.count)
    weights[[fmt.index(name) for name in fmt.torso]] = 1.0
    return weights


def options_with_format(
    format: str, term_options: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Build options by term name (``FitConfig.term_options``) with the keypoints term's
    ``format`` set over ``term_options`` (what ``fit(..., keypoint_format=...)`` and
    ``refine --keypoint-format`` mean; :func:`fitkit.fitting.settings.fit_config` merges them
    over the preset's options one by one).

    Args:
        format: a keypoint format's name.
        term_options: the options given by term name, or ``None``.
    Raises:
        ValueError: an unknown format (the formats listed).
    """
    keypoint_format(format)
    options = dict(term_options or {})
    options["keypoints"] = {**options.get("keypoints", {}), "format": format}
    return options


@register_term("keypoints")
class KeypointsTerm(ReprojectionTerm):
    """Robust reprojection error of a 2D detector's keypoints (module docstring).

    A keypoint is used when the body can place it, its position and confidence are finite and
    its confidence is positive; a sample without any such keypoint is invalid (zero energy,
    ``valid`` False). The term's points (``targets``, ``used``, ``weights``, :attr:`face`) are the
    format's points the body can place, in the format's order (all 25 for BODY_25).

    Args:
        keypoints: ``(B, K, 3)`` detections ``(u, v, confidence)`` in pixels of the full image
            (or of the crop the camera describes), in the format's order; NaN marks a missing
            keypoint. K = 0 (nothing could be read) makes every sample invalid.
        joint_weights: ``(K,)`` per-keypoint weights ``w_k`` over the format's points; default
            the format's (:func:`default_joint_weights`; BODY_25: Neck and hips off).
        rho: Geman-McClure scale in (crop) pixels; ``None`` for the plain squared error.
        crop_size: measure residuals in pixels of a crop of this side around the person (see
            the module docstring); ``None`` for image pixels.
        confidence_weighted: weight keypoints by ``c^2``; if False every used keypoint weighs
            ``w_k``.
        format: the keypoint format (:data:`fitkit.io.keypoint_formats.KEYPOINT_FORMATS`:
            ``body25``, ``coco17``, ``coco_wholebody``, ``halpe26``, ``h36m17``,
            ``mediapipe33``); ``None``: by K (25, 26, 33, 133; 17 is ``coco17``).

    Attributes:
        format: the :class:`~fitkit.io.keypoint_formats.KeypointFormat` of the detections.
        face: ``(N,)`` bool over the term's points, True for nose, eyes and ears.
    Raises:
        ValueError: ``keypoints`` or ``joint_weights`` of the wrong shape; an unknown format; K
            not the count of ``format``, or (without ``format``) of any format (the formats it
            could be are named).
    """

    keyword = "keypoints"
    batch_hint = 512  # joints and a few vertices (DataTerm.batch_hint)
    dataset_pattern = "keypoints/{name}_keypoints.json"

    @classmethod
    def read(cls, value: Any, errors: list[str] | None = None) -> dict[str, np.ndarray]:
        """``{"keypoints": (B, K, 3), "keypoint_format": (B,)}`` from arrays or JSON files of
        OpenPose, mmpose or COCO results (:func:`fitkit.io.inputs.read_keypoints`)."""
        return read_keypoints(value, errors)

    @classmethod
    def from_observations(cls, observations: Any, context: TermContext) -> KeypointsTerm:
        """The term from :meth:`read`'s output (or a ``(B, K, 3)`` tensor) and the context's
        options; the format the files name is the default ``format``.

        Raises:
            FitInputError: the files name another format than the ``format`` option, or K fits
                no format.
        """
        options = dict(context.options)
        if not isinstance(observations, Mapping):
            return cls(observations, **options)
        codes = {int(code) for code in observations["keypoint_format"].tolist() if code}
        named = [list(KEYPOINT_FORMATS)[code - 1] for code in sorted(codes)]
        if len(named) > 1:
            raise FitInputError(f"the keypoint files of a batch name formats {named}; give "
                                "one format per batch")
        keypoints = observations["keypoints"]
        try:
            options["format"] = resolve_format(
                keypoints.shape[1], options.get("format"), named[0] if named else None).name
        except ValueError as error:
            raise FitInputError(str(error)) from None
        return cls(keypoints, **options)

    def __init__(
        self,
        keypoints: Tensor | np.ndarray,
        joint_weights: Tensor | np.ndarray | None = None,
        rho: float | None = 100.0,
        crop_size: float | None = None,
        confidence_weighted: bool = True,
        format: str | None = None,
    ) -> None:
        keypoints = torch.as_tensor(keypoints)
        if not keypoints.is_floating_point():
            keypoints = keypoints.to(torch.get_default_dtype())
        if keypoints.ndim != 3 or keypoints.shape[-1] != 3:
            raise ValueError(
                "keypoints must have shape (B, K, 3) (u, v, confidence), K the points of a "
                f"keypoint format (BODY_25: (B, 25, 3)), got {tuple(keypoints.shape)}"
            )
        fmt = resolve_format(keypoints.shape[1], format)
        if keypoints.shape[1] == 0:
            keypoints = keypoints.new_full((keypoints.shape[0], fmt.count, 3), torch.nan)
        if joint_weights is None:
            joint_weights = default_joint_weights(fmt.name)
        joint_weights = torch.as_tensor(joint_weights, dtype=keypoints.dtype)
        if joint_weights.shape != (fmt.count,):
            raise ValueError(
                f"joint_weights must have shape ({fmt.count},) (one per {fmt.title} keypoint), "
                f"got {tuple(joint_weights.shape)}"
            )
        self.format = fmt
        self.keypoints = keypoints
        self.joint_weights = joint_weights.to(keypoints.device)
        self.confidence_weighted = confidence_weighted
        confidence = keypoints[..., 2]
        used = keypoints.isfinite().all(dim=-1) & (confidence > 0)
        strength = confidence.square() if confidence_weighted else torch.ones_like(confidence)
        weights = strength * self.joint_weights
        targets = keypoints[..., :2]
        placed = list(fmt.placed)
        self.placed: Tensor | None = None
        if len(placed) < fmt.count:  # score only the points the body can place
            self.placed = torch.tensor(placed, device=keypoints.device)
            targets, used, weights = (value[:, self.placed] for value in (targets, used, weights))
        self.set_targets(targets, used, weights, rho, crop_size)
        self.face = torch.tensor([fmt.face[i] for i in placed], device=keypoints.device)
        position = {fmt.names[index]: row for row, index in enumerate(placed)}
        right_shoulder, left_shoulder, right_hip, left_hip = (position[name] for name in fmt.torso)
        self.length_pairs = ([right_shoulder, left_shoulder], [right_hip, left_hip])
        self.anchor = torso_joint_weights(fmt.name)[placed].to(keypoints.device) > 0

    def points(self, body_output: BodyOutput) -> Tensor:
        """``(B, N, 3)`` the body's keypoints of the format that it can place (BODY_25: its
        ``openpose25`` keypoints)."""
        points = body_output.keypoints(self.format.keypoint_set)
        return points if self.placed is None else points[:, self.placed]

    def body_vertices(self, body: BodyModel) -> Tensor | None:
        """The vertices of the format's keypoint set (BODY_25: 11, face and feet; COCO-17: the 5
        face vertices; H36M-17: none)."""
        return body.selector.vertex_ids(self.format.keypoint_set)

    def torso(self) -> KeypointsTerm:
        """SMPLify's camera-stage term: the shoulders and hips, plain squared error, not
        weighted by confidence (SPIN's ``camera_fitting_loss``); same person-size scaling."""
        return KeypointsTerm(
            self.keypoints,
            joint_weights=torso_joint_weights(self.format.name),
            rho=None,
            crop_size=self.crop_size,
            confidence_weighted=False,
            format=self.format.name,
        )
