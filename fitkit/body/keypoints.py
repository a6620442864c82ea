"""Keypoint sets of SMPL-format bodies: ``smpl24``, ``openpose25``, ``markers``, ``vertices``.

``openpose25`` follows the SMPL-family convention (smplx's extra joints and SMPLify-X's
``smpl_to_openpose`` mapping for SMPL): the body points of OpenPose's BODY_25 are SMPL joints
(Neck = SMPL joint 12 ``neck``, MidHip = the pelvis, shoulders, elbows, wrists, hips, knees and
ankles = the SMPL joints of those names); nose, eyes, ears, big toes, small toes and heels are
single mesh vertices named as in ``smplx.vertex_ids`` (``nose reye leye rear lear LBigToe
LSmallToe LHeel RBigToe RSmallToe RHeel``).

The other detectors' formats of :mod:`fitkit.io.keypoint_formats` (``coco17``,
``coco_wholebody``, ``halpe26``, ``h36m17``, ``mediapipe33``) are keypoint sets too, in the
detector's order: each point is the SMPL joint or OpenPose vertex keypoint its format table names,
and NaN where the body has no such point (fingers, face contour, head top). A set reads only the
vertices its format uses (none for ``h36m17``), so sparse evaluation stays small; a body without
the OpenPose vertex keypoints offers the sets that need none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fitkit.io.keypoint_formats import KEYPOINT_FORMATS, KeypointFormat

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

OPENPOSE25_NAMES: tuple[str, ...] = KEYPOINT_FORMATS["body25"].names
"""OpenPose BODY_25 keypoints, in OpenPose's order."""

OPENPOSE_VERTEX_NAMES: tuple[str, ...] = (
    "nose", "reye", "leye", "rear", "lear",
    "LBigToe", "LSmallToe", "LHeel", "RBigToe", "RSmallToe", "RHeel",
)
"""The vertex keypoints ``openpose25`` needs, named and ordered as smplx's extra joints."""



def source_rows(fmt: KeypointFormat) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where a format's points come from on a body.

    Args:
        fmt: the format.
    Returns:
        ``vertices``: the OpenPose vertex keypoints the format uses, as indices into
        :data:`OPENPOSE_VERTEX_NAMES` (in that order); ``rows``: ``(K,)`` for each point its row
        in the 24 SMPL joints followed by those vertices and one NaN row (points without a
        source).
    Raises:
        ValueError: a source that is neither an SMPL joint nor an OpenPose vertex keypoint.
    """
    unknown = [s for s in fmt.sources if s is not None and s not in SMPL_JOINT_NAMES
               and s not in OPENPOSE_VERTEX_NAMES]
    if unknown:
        raise ValueError(f"keypoint format {fmt.name!r}: sources {unknown} are neither SMPL "
                         "joints nor OpenPose vertex keypoints")
    vertices = tuple(i for i, name in enumerate(OPENPOSE_VERTEX_NAMES) if name in fmt.sources)
    used = [OPENPOSE_VERTEX_NAMES[i] for i in vertices]
    rows = tuple(
        len(SMPL_JOINT_NAMES) + len(used) if source is None
        else SMPL_JOINT_NAMES.index(source) if source in SMPL_JOINT_NAMES
        else len(SMPL_JOINT_NAMES) + used.index(source)
        for source in fmt.sources
    )
    return vertices, rows


SMPL_TO_OPENPOSE25: tuple[int, ...] = source_rows(KEYPOINT_FORMATS["body25"])[1]
"""For each BODY_25 keypoint, its row in the 24 SMPL joints followed by the 11 vertex keypoints
of ``OPENPOSE_VERTEX_NAMES`` (smplx's joint list for SMPL, SMPLify-X's mapping)."""

FORMAT_SETS: dict[str, KeypointFormat] = {
    fmt.keypoint_set: fmt for fmt in KEYPOINT_FORMATS.values() if fmt.keypoint_set != "openpose25"
}
"""The keypoint sets of the other detectors' formats, by set name (the format's name)."""

KEYPOINT_SETS: tuple[str, ...] = ("smpl24", "openpose25", *FORMAT_SETS, "markers", "sampled",
                                   "vertices")
"""Names of the keypoint sets a body may offer (each body lists its own in ``keypoint_sets``)."""

SAMPLED_VERTICES = 231
"""Size of the ``sampled`` keypoint set: vertices spread evenly over the body (ReFit's third
kind of feedback keypoints, seed 001), :func:`sample_vertex_ids`."""


def sample_vertex_ids(vertices: Tensor, count: int = SAMPLED_VERTICES) -> Tensor:
    """Vertices spread evenly over a mesh by farthest-point sampling: the first is the vertex
    farthest from the centroid, each next one the vertex farthest from those taken (Euclidean,
    in the rest pose). Deterministic.

    Args:
        vertices: ``(V, 3)`` rest-pose vertices.
        count: how many to take (at most V).
    Returns:
        ``(count,)`` long vertex ids, distinct.
    """
    if not 0 < count <= len(vertices):
        raise ValueError(f"count must be in [1, {len(vertices)}], got {count}")
    points = vertices.detach().double()
    taken = [int((points - points.mean(dim=0)).norm(dim=-1).argmax())]
    nearest = (points - points[taken[0]]).norm(dim=-1)
    for _ in range(count - 1):
        taken.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, (points - points[taken[-1]]).norm(dim=-1))
    return torch.tensor(taken, dtype=torch.long, device=vertices.device)


def _layout() -> tuple[dict[str, tuple[int, int, int, int]], tuple[int, ...], tuple[int, ...]]:
    """The format sets' rows and vertices, concatenated in the order of :data:`FORMAT_SETS`,
    and each set's ``(row start, row stop, vertex start, vertex stop)`` in them."""
    spans, rows, vertices = {}, [], []
    for name, fmt in FORMAT_SETS.items():
        used, own = source_rows(fmt)
        spans[name] = (len(rows), len(rows) + len(own), len(vertices), len(vertices) + len(used))
        rows += own
        vertices += used
    return spans, tuple(rows), tuple(vertices)


FORMAT_SPANS, FORMAT_ROWS, FORMAT_VERTICES = _layout()
"""Every format set's rows (:func:`source_rows`) and vertex indices into
:data:`OPENPOSE_VERTEX_NAMES`, concatenated (a body keeps them in two buffers), and each set's
``(row start, row stop, vertex start, vertex stop)``."""


def needs_openpose_vertices(name: str) -> bool:
    """Whether the keypoint set ``name`` reads any of the OpenPose vertex keypoints."""
    if name in FORMAT_SPANS:
        return FORMAT_SPANS[name][3] > FORMAT_SPANS[name][2]
    return name == "openpose25"


def body_keypoint_sets(has_openpose_vertices: bool, has_markers: bool) -> tuple[str, ...]:
    """The keypoint sets of a body with or without the OpenPose vertex keypoints and markers
    (the format sets that need no vertex, ``h36m17``, are there either way)."""
    return tuple(name for name in KEYPOINT_SETS
                 if (has_markers or name != "markers")
                 and (has_openpose_vertices or not needs_openpose_vertices(name)))


def keypoint_set_names(name: str) -> tuple[str, ...] | None:
    """The point names of the keypoint set ``name`` when they are the same for every body
    (``openpose25`` and the format sets), else ``None``."""
    if name == "openpose25":
        return OPENPOSE25_NAMES
    return FORMAT_SETS[name].names if name in FORMAT_SETS else None


@dataclass(frozen=True)
class KeypointSelector:
    """Which vertices make up the vertex-based keypoint sets of one body model.

    Attributes:
        openpose_vertex_ids: ``(11,)`` long, the vertices of ``OPENPOSE_VERTEX_NAMES``, or
            ``None`` for a body without them (its ``openpose25`` set, and the format sets that
            read vertices, are unavailable).
        openpose_map: ``(25,)`` long, ``SMPL_TO_OPENPOSE25`` on the body's device.
        marker_ids: ``(M,)`` long, the vertices of the body's markers, or ``None``.
        source: the body model's file, for error messages.
        format_rows: ``(sum K,)`` long, :data:`FORMAT_ROWS` on the body's device.
        format_vertices: ``(sum Kv,)`` long, :data:`FORMAT_VERTICES` on the body's device.
        sampled_ids: ``(min(SAMPLED_VERTICES, V),)`` long, the ``sampled`` set's vertices.
    """

    openpose_vertex_ids: Tensor | None
    openpose_map: Tensor
    marker_ids: Tensor | None
    source: str
    format_rows: Tensor
    format_vertices: Tensor
    sampled_ids: Tensor

    def vertex_ids(self, name: str) -> Tensor | None:
        """The body vertices the set ``name`` reads: ``(K,)`` long (empty for ``smpl24`` and
        ``h36m17``), or ``None`` for ``vertices`` (all of them).

        Raises:
            ValueError: unknown set, or a set this body does not have.
        """
        if name == "vertices":
            return None
        if name == "smpl24" or name in FORMAT_SETS and not needs_openpose_vertices(name):
            return self.openpose_map.new_zeros(0)
        if name in FORMAT_SETS and self.openpose_vertex_ids is not None:
            _, _, start, stop = FORMAT_SPANS[name]
            return self.openpose_vertex_ids[self.format_vertices[start:stop]]
        if name == "openpose25" and self.openpose_vertex_ids is not None:
            return self.openpose_vertex_ids
        if name == "markers" and self.marker_ids is not None:
            return self.marker_ids
        if name == "sampled":
            return self.sampled_ids
        if name not in KEYPOINT_SETS:
            raise ValueError(f"unknown keypoint set {name!r}; known sets: "
                             f"{', '.join(KEYPOINT_SETS)}")
        keys = ("'marker_names'/'marker_ids'" if name == "markers"
                else "'vertex_ids_names'/'vertex_ids'")
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
            ``(B, K, 3)``: K = 24 (``smpl24``), 25 (``openpose25``), the format's count (a
            format set; NaN rows for points the body cannot place), M (``markers``),
            :data:`SAMPLED_VERTICES` (``sampled``) or V (``vertices``).
        """
        if name == "smpl24":
            return joints
        if name == "vertices":
            return vertices
        if name in FORMAT_SETS:
            start, stop, _, _ = FORMAT_SPANS[name]
            parts = [joints]
            if needs_openpose_vertices(name):
                parts.append(vertices_at(self.vertex_ids(name)))
            parts.append(joints.new_full((joints.shape[0], 1, 3), float("nan")))
            return torch.cat(parts, dim=1)[:, self.format_rows[start:stop]]
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
        if name == "sampled":
            return vertices_at(self.sampled_ids)
        raise ValueError(f"unknown keypoint set {name!r}; known sets: {', '.join(KEYPOINT_SETS)}")
