"""Plausibility flags: fits that converged cleanly but whose 3D body is likely wrong.

A fit can end without NaN or divergence and still be wrong in ways its energy does not show:
elbows or knees bent backwards, the body turned away from the camera while its face is in the
image, a depth that does not match the person's size in the image, a large 2D error. Every
SMPLify result (:meth:`fitkit.fitting.SMPLify.fit`) carries four flags for them, each
``(B,)`` bool, from measures of the fitted body (:func:`measure_plausibility`) against fixed
thresholds (:func:`plausibility_flags`):

- ``hyperextended``: an elbow or knee bent against its limit by more than
  :data:`HYPEREXTENSION_DEGREES`. The bend is the axis-angle component SMPLify's bending prior
  penalizes (:data:`fitkit.priors.bending.BENDING_INDICES`, signed by ``BENDING_SIGNS`` so that
  positive is hyper-extension): elbows about y, knees about x.
- ``reprojection``: the median 2D error of the targets that count, over the person's height in
  the image (:meth:`fitkit.terms.ReprojectionTerm.relative_error`), above
  :data:`REPROJECTION_ERROR`, for any 2D data term (keypoints, DensePose, flow).
- ``depth``: the fitted body drawn too small or too large for the 2D data: the spread (RMS
  distance to the centroid) of its projected points over that of their targets
  (:meth:`fitkit.terms.ReprojectionTerm.size_ratio`; about ``1 / k`` for a body ``k`` times too
  far) outside ``[1 / DEPTH_RATIO, DEPTH_RATIO]`` (:data:`DEPTH_RATIO`), for any 2D data term.
- ``facing``: the torso faces away from the camera while more than half of the face points are
  detected, or faces the camera while fewer than half are although the head is in the image.
  The torso's front is ``left x up`` in the camera frame (the camera's extrinsics applied):
  ``left`` from the right to the left shoulder plus from the right to the left hip, ``up``
  from the pelvis to the neck (SMPL joints); it faces the camera when the angle between its
  front and the direction from the torso to the camera is below :data:`FACING_ANGLE`, away
  when it is above ``180° - FACING_ANGLE``. Face points are those a 2D term marks in
  :attr:`fitkit.terms.ReprojectionTerm.face` (for BODY_25 the nose, eyes and ears); one counts
  as detected when it is used with a weight of at least :data:`FACE_WEIGHT` (the keypoints
  term weighs a face point by its confidence squared: a confidence of at least 0.5). The head
  is in the image when more than half of the fitted face points project inside it, in front of
  the camera. Terms without ``face`` do not take part; without one the flag stays off.

A measure that cannot be computed (no 2D term, no target that counts) is NaN and raises no
flag. The thresholds were chosen on refined fits of a synthetic set with detector-like
keypoints: they stay off on its ground truth and on its good fits (``docs/plausibility.md``
has the figures).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from fitkit.body import SMPL_JOINT_NAMES, BodyOutput
from fitkit.geometry import Camera
from fitkit.priors.bending import BENDING_INDICES, BENDING_SIGNS
from fitkit.terms import DataTerm, ReprojectionTerm

HYPEREXTENSION_DEGREES = 20.0
"""Largest hyper-extension of an elbow or knee (degrees of its bending component) that passes."""

REPROJECTION_ERROR = 0.05
"""Largest median 2D error, as a fraction of the person's height in the image, that passes."""

DEPTH_RATIO = 1.25
"""Largest factor between the projected body's size and the 2D data's size that passes."""

FACING_ANGLE = 45.0
"""Degrees: the torso faces the camera within this angle, and away beyond 180° minus it."""

FACE_WEIGHT = 0.25
"""Smallest target weight of a detected face point (keypoints: confidence 0.5)."""

PLAUSIBILITY_FLAGS: tuple[str, ...] = ("hyperextended", "reprojection", "facing", "depth")
"""The flags of :func:`plausibility_flags`, in that order."""

_JOINT = SMPL_JOINT_NAMES.index


def measure_plausibility(
    body_pose: Tensor,
    body_output: BodyOutput,
    terms: Mapping[str, DataTerm],
    camera: Camera,
) -> dict[str, Tensor]:
    """The measures behind the plausibility flags (module docstring), each ``(B,)``.

    Args:
        body_pose: ``(B, 69)`` fitted axis-angle pose.
        body_output: the fitted bodies (batch B; joints and the points the terms read).
        terms: the fit's data terms by name; the 2D ones (:class:`ReprojectionTerm`) are read.
        camera: the cameras (batch B).
    Returns:
        ``hyperextension``: degrees, the largest of the four bends (negative when all flex);
        ``relative_error``: the largest relative 2D error over the 2D terms; ``size_ratio``:
        projected over 2D size, the term's furthest from 1; ``facing``: cosine of the angle
        between the torso's front and the direction to the camera (1 facing it, -1 away);
        ``face``: the share of face points detected, NaN where unknown (no term with face
        points and data for the sample, or the head not in the image). NaN where not measured.
    """
    with torch.no_grad():
        signs = body_pose.new_tensor(BENDING_SIGNS)
        bend = body_pose[:, list(BENDING_INDICES)] * signs
        nan = torch.full_like(bend[:, 0], torch.nan)
        measures = {"hyperextension": torch.rad2deg(bend.amax(dim=-1)),
                    "relative_error": nan, "size_ratio": nan,
                    "facing": torso_facing(camera.to_camera(body_output.joints)), "face": nan}
        for term in terms.values():
            if not isinstance(term, ReprojectionTerm):
                continue
            error = term.relative_error(body_output, camera).to(nan)
            measures["relative_error"] = torch.fmax(measures["relative_error"], error)
            ratio = term.size_ratio(body_output, camera).to(nan)
            further = ratio.log().abs() > measures["size_ratio"].log().abs()
            measures["size_ratio"] = torch.where(
                further | measures["size_ratio"].isnan(), ratio, measures["size_ratio"])
            face = _face_detected(term, body_output, camera).to(nan)
            measures["face"] = torch.where(measures["face"].isnan(), face, measures["face"])
    return measures


def plausibility_flags(measures: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The flags of :data:`PLAUSIBILITY_FLAGS` from :func:`measure_plausibility`'s measures.

    Returns:
        ``(B,)`` bool each; a NaN measure raises no flag.
    """
    cosine = math.cos(math.radians(FACING_ANGLE))
    facing, face = measures["facing"], measures["face"]
    return {
        "hyperextended": measures["hyperextension"] > HYPEREXTENSION_DEGREES,
        "reprojection": measures["relative_error"] > REPROJECTION_ERROR,
        "facing": ((facing < -cosine) & (face > 0.5)) | ((facing > cosine) & (face < 0.5)),
        "depth": measures["size_ratio"].log().abs() > math.log(DEPTH_RATIO),
    }


def torso_facing(joints: Tensor) -> Tensor:
    """Cosine of the angle between the torso's front and the direction from the torso to the
    camera (module docstring): 1 when the body faces the camera, -1 when it faces away.

    Args:
        joints: ``(B, 24, 3)`` SMPL joints in the camera frame.
    Returns:
        ``(B,)``, 0 for a degenerate torso.
    """
    left = (joints[:, _JOINT("left_shoulder")] - joints[:, _JOINT("right_shoulder")]
            + joints[:, _JOINT("left_hip")] - joints[:, _JOINT("right_hip")])
    up = joints[:, _JOINT("neck")] - joints[:, _JOINT("pelvis")]
    front = torch.nn.functional.normalize(torch.linalg.cross(left, up), dim=-1)
    torso = [_JOINT(name) for name in ("left_shoulder", "right_shoulder", "left_hip",
                                       "right_hip")]
    to_camera = torch.nn.functional.normalize(-joints[:, torso].mean(dim=1), dim=-1)
    return (front * to_camera).sum(dim=-1)


def _face_detected(term: ReprojectionTerm, body_output: BodyOutput, camera: Camera) -> Tensor:
    """``(B,)`` the share of ``term``'s face points detected (module docstring), NaN where the
    term has no face points, no data for the sample, or the fitted head is not in the image."""
    nan = torch.full(term.used.shape[:1], torch.nan, device=term.used.device)
    if term.face is None or not bool(term.face.any()):
        return nan
    face = term.face.to(term.used.device)
    detected = term.used[:, face] & (term.weights[:, face] >= FACE_WEIGHT)
    points = camera.to_camera(term.points(body_output)[:, face])
    pixels = camera.project(points)
    size = camera.image_size[:, None, :].to(pixels)
    inside = ((pixels >= 0) & (pixels <= size - 1)).all(dim=-1) & (points[..., 2] > 0)
    head_in_image = inside.to(nan.dtype).mean(dim=-1) > 0.5
    share = detected.to(nan.dtype).mean(dim=-1)
    return torch.where(term.valid & head_in_image, share, nan)
