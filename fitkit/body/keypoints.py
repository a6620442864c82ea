"""Keypoint sets of SMPL-format bodies: ``smpl24``, ``openpose25``, ``markers``, ``vertices``.

``openpose25`` follows the SMPL-family convention (smplx's extra joints and SMPLify-X's
``smpl_to_openpose`` mapping for SMPL): the body points of OpenPose's BODY_25 are SMPL joints
(Neck = SMPL joint 12 ``neck``, MidHip = the pelvis, shoulders, elbows, wrists, hips, knees and
ankles = the SMPL joints of those names); nose, eyes, ears, big toes, small toes and heels are
single mesh vertices named as in ``smplx.vertex_ids`` (``nose reye leye rear lear LBigToe
LSmallToe LHeel RBigToe RSmallToe RHeel``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)
"""The 24 SMPL joints, in SMPL order."""

SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)
"""Parent of each SMPL joint (-1 for the root)."""

OPENPOSE25_NAMES: tuple[str, ...] = (
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip",
    "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
)
"""OpenPose BODY_25 keypoints, in OpenPose's order."""

OPENPOSE_VERTEX_NAMES: tuple[str, ...] = (
    "nose", "reye", "leye", "rear", "lear",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
)
"""The vertex keypoints ``openpose25`` needs, named and ordered as smplx's extra joints."""

SMPL_TO_OPENPOSE25: tuple[int, ...] = (
    24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
)
"""For each BODY_25 keypoint, its row in the 24 SMPL joints followed by the 11 vertex keypoints
of ``OPENPOSE_VERTEX_NAMES`` (smplx's joint list for SMPL, SMPLify-X's mapping)."""

KEYPOINT_SETS: tuple[str, ...] = ("smpl24", "openpose25", "markers", "vertices")
"""Names of the keypoint sets a body may offer (each body lists its own in ``keypoint_sets``)."""


@dataclass(frozen=True)
class KeypointSelector:
    """Which vertices make up the vertex-based keypoint sets of one body model.

    Attributes:
        openpose_vertex_ids: ``(11,)`` long, the vertices of ``OPENPOSE_VERTEX_NAMES``, or
            ``None`` for a body without them (its ``openpose25`` set is unavailable).
        openpose_map: ``(25,)`` long, ``SMPL_TO_OPENPOSE25`` on the body's device.
        marker_ids: ``(M,)`` long, the vertices of the body's markers, or ``None``.
        source: the body model's file, for error messages.
    """

    openpose_vertex_ids: Tensor | None
    openpose_map: Tensor
    marker_ids: Tensor | None
    source: str

    def vertex_ids(self, name: str) -> Tensor | None:
        """The body vertices the set ``name`` reads: ``(K,)`` long (empty for ``smpl24``), or
        ``None`` for ``vertices`` (all of them).

        Raises:
            ValueError: unknown set, or a set this body does not have.
        """
        if name == "smpl24":
            return self.openpose_map.new_zeros(0)
        if name == "vertices":
            return None
        if name == "openpose25" and self.openpose_vertex_ids is not None:
            return self.openpose_vertex_ids
        if name == "markers" and self.marker_ids is not None:
            return self.marker_ids
        if name not in KEYPOINT_SETS:
            raise ValueError(f"unknown keypoint set {name!r}; known sets: "
                             f"{', '.join(KEYPOINT_SETS)}")
        keys = ("'vertex_ids_names'/'vertex_ids'" if name == "openpose25"
                else "'marker_names'/'marker_ids'")
        raise ValueError(f"body model {self.source} has no {name!r} keypoints (keys {keys})")

    def select(self, name: str, vertices_at: Callable[[Tensor], Tensor], joints: Tensor,
               vertices: Tensor) -> Tensor:
        """The keypoints of set ``name``.

        Args:
            name: one of ``KEYPOINT_SETS``.
            vertices_at: the posed vertices of given vertex ids, ``(K,)`` -> ``(B, K, 3)``
                (:meth:`fitkit.body.BodyOutput.vertices_at`).
            joints: ``(B, 24, 3)`` posed SMPL joints.
            vertices: ``(B, V, 3)`` all posed vertices (for the set ``vertices``).
        Returns:
            ``(B, K, 3)``: K = 24 (``smpl24``), 25 (``openpose25``), M (``markers``) or
            V (``vertices``).
        """
        if name == "smpl24":
            return joints
        if name == "vertices":
            return vertices
        if name == "openpose25":
            if self.openpose_vertex_ids is None:
                raise ValueError(
                    f"body model {self.source} has no OpenPose vertex keypoints (keys "
                    "'vertex_ids_names'/'vertex_ids'), so its 'openpose25' set is unavailable"
                )
            points = torch.cat([joints, vertices_at(self.openpose_vertex_ids)], dim=1)
            return points[:, self.openpose_map]
        if name == "markers":
            if self.marker_ids is None:
                raise ValueError(
                    f"body model {self.source} has no markers (keys 'marker_names'/'marker_ids'),"
                    " so its 'markers' set is unavailable"
                )
            return vertices_at(self.marker_ids)
        raise ValueError(f"unknown keypoint set {name!r}; known sets: {', '.join(KEYPOINT_SETS)}")
