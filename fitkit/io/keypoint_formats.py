"""Keypoint formats of 2D detectors, how the body stands for each, and their JSON files.

A format is an ordered list of K named points (:class:`KeypointFormat`). Each point has a
*source* on the body: an SMPL joint (a name of ``fitkit.body.SMPL_JOINT_NAMES``), one of the
body's OpenPose vertex keypoints (``fitkit.body.OPENPOSE_VERTEX_NAMES``: ``nose reye leye rear
lear LBigToe LSmallToe LHeel RBigToe RSmallToe RHeel``), or none when the body has no such point
(fingers, the face contour, the top of the head); and a default weight. The names are plain
strings here (``io`` sits below ``body``); ``fitkit.body.keypoints`` turns them into keypoint sets.

Formats (:data:`KEYPOINT_FORMATS`; K; the body's keypoint set):

- ``body25``: OpenPose BODY_25 (25; ``openpose25``). SMPLify-X's mapping for SMPL; Neck and hips
  weigh 0 (SPIN's SMPLify: OpenPose puts them elsewhere than SMPL's joints), MidHip is the pelvis.
- ``coco17``: COCO-17 (17; ``coco17``), as mmpose, ViTPose, RTMPose and most detectors write it.
  Nose, eyes and ears are the body's face vertices; hips weigh 0.5 (below).
- ``coco_wholebody``: COCO-WholeBody (133; ``coco_wholebody``): COCO-17, then 6 foot points
  (the body's toe and heel vertices), 68 face points, 21 points per hand. Face contour and hands
  weigh 0 and are not placed.
- ``halpe26``: Halpe-26 (26; ``halpe26``) of AlphaPose / RTMPose: COCO-17 plus head top, neck,
  mid-hip and 6 foot points; weighed as BODY_25 (neck and hips 0, mid-hip the pelvis); the head
  top is not placed.
- ``h36m17``: Human3.6M's 17 joints in mmpose's order (17; ``h36m17``). Its pelvis, hips, spine,
  thorax and neck base are mocap-skeleton joints that sit near, not at, SMPL's pelvis, hips,
  spine2, neck and head joints (mmhuman3d names them ``*_extra`` for that reason): they weigh
  0.5; the head top is not placed.
- ``mediapipe33``: MediaPipe Pose / BlazePose (33; ``mediapipe33``). The inner and outer eye
  corners, the mouth corners and the finger points are not placed; heels and foot indices are
  the heel and big-toe vertices; hips weigh 0.5. MediaPipe gives coordinates normalized by the
  image size: multiply x by the width and y by the height before fitting.

Weights, chosen (and what would make them change): 1 where the detector's point and the body's
source are the same anatomical point; 0.5 where the detector's point sits a few centimetres from
the SMPL joint that stands for it but the format has no other point for that part of the body
(COCO-style hips, annotated higher and more lateral than SMPL's hip joints, carry the pelvis's
position and turn in COCO-17, COCO-WholeBody and MediaPipe, which have no mid-hip; H36M's
``*_extra`` joints); 0 where a better point of the same format exists (BODY_25 and Halpe-26 have a
mid-hip and a neck placed as OpenPose places them) or the body has no source. Points without a
source are not scored at all (they count neither for the person's size nor for the translation
estimate); 0-weight points with a source still count for both, as BODY_25's always did.

Face points (:attr:`KeypointFormat.face`): nose, eyes (MediaPipe's eye corners too) and ears.

Files (:func:`read_keypoint_file`), recognized by their structure:

- OpenPose: ``{"people": [{"pose_keypoints_2d": [x, y, c, ...]}]}`` (:mod:`fitkit.io.openpose`).
- mmpose's inferencer (``MMPoseInferencer(..., pred_out_dir=...)``, the layout of its
  ``predictions``): a list of instances ``{"keypoints": [[x, y], ...], "keypoint_scores": [...],
  "bbox": ..., "bbox_score": ...}``, or ``{"predictions": [[instance, ...]]}``, or for a video
  ``[{"frame_id": 0, "instances": [...]}]`` (one frame only).
- mmpose's demos (``--save-predictions``): ``{"meta_info": {"dataset_name": "coco", ...},
  "instance_info": [instance, ...]}`` (or one ``{"frame_id", "instances"}`` frame); the dataset
  name gives the format (``coco``, ``coco_wholebody``, ``ubody2d``, ``halpe26``, ``h36m``).
- COCO results (ViTPose, mmpose's ``CocoMetric``, detectron2): a list of ``{"image_id": ...,
  "category_id": 1, "keypoints": [x, y, v, ...], "score": ...}`` of one image. ``v`` is the score,
  or COCO's visibility flag (0 not labelled, 1 occluded, 2 visible); it is clipped to [0, 1].

Without a dataset name the format follows from the count K (:func:`resolve_format`): 25, 26, 33
and 133 are unambiguous, 17 is COCO-17 unless ``format="h36m17"``. Coordinates are pixels of the
image ``(u = column, v = row)``; non-finite values make a point missing (``0, 0, 0``), as for
OpenPose files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fitkit.io.openpose import KeypointFileError, openpose_people

__all__ = [
    "FORMAT_BY_COUNT",
    "KEYPOINT_FORMATS",
    "MMPOSE_DATASETS",
    "KeypointFile",
    "KeypointFormat",
    "format_code",
    "formats_summary",
    "keypoint_format",
    "read_keypoint_file",
    "resolve_format",
]


@dataclass(frozen=True)
class KeypointFormat:
    """One detector's keypoints and how the body stands for them.

    Attributes:
        name: the format's name (``"coco17"``), as ``fit(..., keypoint_format=...)`` takes it.
        title: its usual name (``"COCO-17"``).
        names: ``(K,)`` the points' names, in the detector's order.
        sources: ``(K,)`` the body point of each: an SMPL joint name, an OpenPose vertex
            keypoint name, or ``None`` (the body cannot place it).
        weights: ``(K,)`` default per-point weights (0 for points without a source).
        face: ``(K,)`` whether the point is on the face (nose, eyes, ears).
        keypoint_set: the body's keypoint set of this format (``"openpose25"`` for BODY_25,
            else the format's name).
        torso: names of the right shoulder, left shoulder, right hip and left hip (the camera
            stage's points; shoulder-hip pairs give the translation estimate's torso length).
    """

    name: str
    title: str
    names: tuple[str, ...]
    sources: tuple[str | None, ...]
    weights: tuple[float, ...]
    face: tuple[bool, ...]
    keypoint_set: str
    torso: tuple[str, str, str, str]

    @property
    def count(self) -> int:
        """K, the number of points."""
        return len(self.names)

    @property
    def placed(self) -> tuple[int, ...]:
        """Indices of the points the body can place (a source that is not ``None``)."""
        return tuple(i for i, source in enumerate(self.sources) if source is not None)

    def index(self, name: str) -> int:
        """Index of the point ``name``.

        Raises:
            ValueError: no such point (the format named).
        """
        if name not in self.names:
            raise ValueError(f"keypoint format {self.name!r} has no point {name!r}")
        return self.names.index(name)


Row = tuple[str, str | None, float]
"""A point of a table: its name, its body source (``None``: not placed) and its weight."""


def _format(name: str, title: str, rows: list[Row], face: tuple[str, ...],
            torso: tuple[str, str, str, str], keypoint_set: str | None = None) -> KeypointFormat:
    """A :class:`KeypointFormat` from rows; points without a source weigh 0."""
    names = tuple(row[0] for row in rows)
    if len(set(names)) != len(names) or not set(face) | set(torso) <= set(names):
        raise ValueError(f"keypoint format {name!r}: repeated or unknown point names")
    return KeypointFormat(
        name=name,
        title=title,
        names=names,
        sources=tuple(row[1] for row in rows),
        weights=tuple(float(row[2]) if row[1] is not None else 0.0 for row in rows),
        face=tuple(point in face for point in names),
        keypoint_set=keypoint_set or name,
        torso=torso,
    )


HIP_WEIGHT = 0.5
"""Weight of detector points near, not at, their SMPL joint when the format has no better one
(module docstring)."""

_COCO17_ROWS: list[Row] = [
    ("nose", "nose", 1.0),
    ("left_eye", "leye", 1.0),
    ("right_eye", "reye", 1.0),
    ("left_ear", "lear", 1.0),
    ("right_ear", "rear", 1.0),
    ("left_shoulder", "left_shoulder", 1.0),
    ("right_shoulder", "right_shoulder", 1.0),
    ("left_elbow", "left_elbow", 1.0),
    ("right_elbow", "right_elbow", 1.0),
    ("left_wrist", "left_wrist", 1.0),
    ("right_wrist", "right_wrist", 1.0),
    ("left_hip", "left_hip", HIP_WEIGHT),
    ("right_hip", "right_hip", HIP_WEIGHT),
    ("left_knee", "left_knee", 1.0),
    ("right_knee", "right_knee", 1.0),
    ("left_ankle", "left_ankle", 1.0),
    ("right_ankle", "right_ankle", 1.0),
]
_COCO_FACE = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
_COCO_TORSO = ("right_shoulder", "left_shoulder", "right_hip", "left_hip")

_FOOT_SOURCES = {
    "left_big_toe": "LBigToe", "left_small_toe": "LSmallToe", "left_heel": "LHeel",
    "right_big_toe": "RBigToe", "right_small_toe": "RSmallToe", "right_heel": "RHeel",
}
_HAND_POINTS = ("hand_root",) + tuple(
    f"{finger}{joint}" for finger in ("thumb", "forefinger", "middle_finger", "ring_finger",
                                      "pinky_finger") for joint in range(1, 5))

_BODY25_ROWS: list[Row] = [
    ("Nose", "nose", 1.0), ("Neck", "neck", 0.0), ("RShoulder", "right_shoulder", 1.0),
    ("RElbow", "right_elbow", 1.0), ("RWrist", "right_wrist", 1.0),
    ("LShoulder", "left_shoulder", 1.0), ("LElbow", "left_elbow", 1.0),
    ("LWrist", "left_wrist", 1.0), ("MidHip", "pelvis", 1.0), ("RHip", "right_hip", 0.0),
    ("RKnee", "right_knee", 1.0), ("RAnkle", "right_ankle", 1.0), ("LHip", "left_hip", 0.0),
    ("LKnee", "left_knee", 1.0), ("LAnkle", "left_ankle", 1.0), ("REye", "reye", 1.0),
    ("LEye", "leye", 1.0), ("REar", "rear", 1.0), ("LEar", "lear", 1.0),
    ("LBigToe", "LBigToe", 1.0), ("LSmallToe", "LSmallToe", 1.0), ("LHeel", "LHeel", 1.0),
    ("RBigToe", "RBigToe", 1.0), ("RSmallToe", "RSmallToe", 1.0), ("RHeel", "RHeel", 1.0),
]

_HALPE26_ROWS: list[Row] = [
    *[(name, source, 0.0 if name.endswith("_hip") else weight)
      for name, source, weight in _COCO17_ROWS],
    ("head", None, 0.0), ("neck", "neck", 0.0), ("hip", "pelvis", 1.0),
    *[(name, _FOOT_SOURCES[name], 1.0) for name in (
        "left_big_toe", "right_big_toe", "left_small_toe", "right_small_toe", "left_heel",
        "right_heel")],
]

_WHOLEBODY_ROWS: list[Row] = [
    *_COCO17_ROWS,
    *[(name, _FOOT_SOURCES[name], 1.0) for name in (
        "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
        "right_heel")],
    *[(f"face-{i}", None, 0.0) for i in range(68)],
    *[(f"{side}_{point}", None, 0.0) for side in ("left", "right") for point in _HAND_POINTS],
]

_H36M17_ROWS: list[Row] = [
    ("root", "pelvis", HIP_WEIGHT), ("right_hip", "right_hip", HIP_WEIGHT),
    ("right_knee", "right_knee", 1.0), ("right_foot", "right_ankle", 1.0),
    ("left_hip", "left_hip", HIP_WEIGHT), ("left_knee", "left_knee", 1.0),
    ("left_foot", "left_ankle", 1.0), ("spine", "spine2", HIP_WEIGHT),
    ("thorax", "neck", HIP_WEIGHT), ("neck_base", "head", HIP_WEIGHT), ("head", None, 0.0),
    ("left_shoulder", "left_shoulder", 1.0), ("left_elbow", "left_elbow", 1.0),
    ("left_wrist", "left_wrist", 1.0), ("right_shoulder", "right_shoulder", 1.0),
    ("right_elbow", "right_elbow", 1.0), ("right_wrist", "right_wrist", 1.0),
]

_MEDIAPIPE33_ROWS: list[Row] = [
    ("nose", "nose", 1.0),
    ("left_eye_inner", None, 0.0), ("left_eye", "leye", 1.0), ("left_eye_outer", None, 0.0),
    ("right_eye_inner", None, 0.0), ("right_eye", "reye", 1.0), ("right_eye_outer", None, 0.0),
    ("left_ear", "lear", 1.0), ("right_ear", "rear", 1.0),
    ("mouth_left", None, 0.0), ("mouth_right", None, 0.0),
    ("left_shoulder", "left_shoulder", 1.0), ("right_shoulder", "right_shoulder", 1.0),
    ("left_elbow", "left_elbow", 1.0), ("right_elbow", "right_elbow", 1.0),
    ("left_wrist", "left_wrist", 1.0), ("right_wrist", "right_wrist", 1.0),
    ("left_pinky", None, 0.0), ("right_pinky", None, 0.0),
    ("left_index", None, 0.0), ("right_index", None, 0.0),
    ("left_thumb", None, 0.0), ("right_thumb", None, 0.0),
    ("left_hip", "left_hip", HIP_WEIGHT), ("right_hip", "right_hip", HIP_WEIGHT),
    ("left_knee", "left_knee", 1.0), ("right_knee", "right_knee", 1.0),
    ("left_ankle", "left_ankle", 1.0), ("right_ankle", "right_ankle", 1.0),
    ("left_heel", "LHeel", 1.0), ("right_heel", "RHeel", 1.0),
    ("left_foot_index", "LBigToe", 1.0), ("right_foot_index", "RBigToe", 1.0),
]

KEYPOINT_FORMATS: dict[str, KeypointFormat] = {
    fmt.name: fmt
    for fmt in (
        _format("body25", "OpenPose BODY_25", _BODY25_ROWS,
                face=("Nose", "REye", "LEye", "REar", "LEar"),
                torso=("RShoulder", "LShoulder", "RHip", "LHip"), keypoint_set="openpose25"),
        _format("coco17", "COCO-17", _COCO17_ROWS, _COCO_FACE, _COCO_TORSO),
        _format("coco_wholebody", "COCO-WholeBody", _WHOLEBODY_ROWS, _COCO_FACE, _COCO_TORSO),
        _format("halpe26", "Halpe-26", _HALPE26_ROWS, _COCO_FACE, _COCO_TORSO),
        _format("h36m17", "Human3.6M-17", _H36M17_ROWS, (), _COCO_TORSO),
        _format("mediapipe33", "MediaPipe Pose", _MEDIAPIPE33_ROWS,
                ("nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner",
                 "right_eye", "right_eye_outer", "left_ear", "right_ear"), _COCO_TORSO),
    )
}
"""The formats fitkit reads, by name (module docstring)."""

FORMAT_BY_COUNT: dict[int, str] = {
    25: "body25", 17: "coco17", 26: "halpe26", 33: "mediapipe33", 133: "coco_wholebody",
}
"""The format a point count K stands for when nothing else says (17: COCO-17, not H36M)."""

MMPOSE_DATASETS: dict[str, str] = {
    "coco": "coco17", "coco_wholebody": "coco_wholebody", "ubody2d": "coco_wholebody",
    "halpe26": "halpe26", "h36m": "h36m17",
}
"""The format of each mmpose ``dataset_name`` (``meta_info`` of mmpose's demos) fitkit reads."""


def formats_summary(count: int | None = None) -> str:
    """``"body25 (25), coco17 (17), ..."``: the formats (those with ``count`` points when given)."""
    return ", ".join(f"{fmt.name} ({fmt.count})" for fmt in KEYPOINT_FORMATS.values()
                     if count is None or fmt.count == count)


def keypoint_format(name: str) -> KeypointFormat:
    """The format ``name``.

    Raises:
        ValueError: an unknown name (the formats listed).
    """
    if name not in KEYPOINT_FORMATS:
        raise ValueError(f"unknown keypoint format {name!r}; formats: {formats_summary()}")
    return KEYPOINT_FORMATS[name]


def format_code(name: str | None) -> int:
    """The code of a format in per-sample arrays: ``i + 1`` for the i-th of
    :data:`KEYPOINT_FORMATS`, 0 for ``None`` (not named)."""
    return 0 if name is None else list(KEYPOINT_FORMATS).index(keypoint_format(name).name) + 1


def resolve_format(count: int, format: str | None = None, named: str | None = None,
                   source: str = "keypoints") -> KeypointFormat:
    """The format of keypoints with ``count`` points per person.

    Args:
        count: K (0: nothing could be read; any format fits).
        format: the format asked for (a term option), or ``None``.
        named: the format the input names (an OpenPose file, an mmpose file's dataset), or
            ``None``.
        source: what the keypoints are, for messages.
    Returns:
        ``format`` if given, else ``named``, else the format of K (:data:`FORMAT_BY_COUNT`;
        BODY_25 for K = 0).
    Raises:
        ValueError: an unknown format; ``format`` and ``named`` differ; K is not the count of
            the chosen format (the formats K could be are named); no format has K points (all
            formats are listed).
    """
    for name in (format, named):
        if name is not None:
            keypoint_format(name)
    if format is not None and named is not None and format != named:
        raise ValueError(f"{source}: the files name format {named!r}, but the format asked "
                         f"for is {format!r}")
    chosen = format or named
    if chosen is None:
        if count == 0:
            return KEYPOINT_FORMATS["body25"]
        if count not in FORMAT_BY_COUNT:
            raise ValueError(
                f"{source} must have shape (B, 25, 3) (OpenPose BODY_25) or (B, K, 3) with K the "
                f"point count of another format: {formats_summary()}; got K = {count}, which "
                "fits none of them")
        return KEYPOINT_FORMATS[FORMAT_BY_COUNT[count]]
    fmt = KEYPOINT_FORMATS[chosen]
    if count not in (0, fmt.count):
        could = formats_summary(count) or f"no format (formats: {formats_summary()})"
        raise ValueError(f"{source}: format {fmt.name!r} has {fmt.count} points per person, got "
                         f"{count}; {count} points could be {could}")
    return fmt


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class KeypointFile:
    """The people of one keypoint file.

    Attributes:
        people: ``(P, K, 3)`` float32 ``(u, v, confidence)``; P may be 0, and K is 0 when the
            file lists nobody and does not say its format.
        format: the format the file names (OpenPose: ``body25``; an mmpose file with a dataset
            name), or ``None`` (the count decides).
        layout: ``"openpose"``, ``"mmpose"`` or ``"coco"``, for messages.
    """

    people: np.ndarray
    format: str | None
    layout: str


def read_keypoint_file(path: str | os.PathLike) -> KeypointFile:
    """All people of a keypoint JSON file of OpenPose, mmpose or the COCO results layout,
    recognized by its structure (module docstring).

    Raises:
        FileNotFoundError: no such file.
        fitkit.io.openpose.KeypointFileError: not JSON, a layout fitkit does not know, a
            malformed field, a count no format has, an mmpose dataset fitkit does not read (the
            message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint file not found: {path}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise KeypointFileError(path, None, f"not a JSON file ({error})") from error
    if isinstance(content, dict) and "people" in content:
        return KeypointFile(openpose_people(content, path), "body25", "openpose")
    if isinstance(content, dict) and "instance_info" in content:
        named, meta_count = _mmpose_meta(content.get("meta_info"), path)
        instances = _one_frame(content["instance_info"], path, "instance_info")
        return _mmpose_file(instances, path, "instance_info", named, meta_count)
    if isinstance(content, dict) and "predictions" in content:
        predictions = content["predictions"]
        if (isinstance(predictions, list) and len(predictions) == 1
                and isinstance(predictions[0], list)):
            return _mmpose_file(predictions[0], path, "predictions[0]")
        return _mmpose_file(_one_frame(predictions, path, "predictions"), path, "predictions")
    if isinstance(content, list):
        if all(isinstance(item, dict) and "keypoint_scores" in item for item in content):
            return _mmpose_file(content, path, "")
        if content and all(isinstance(item, dict) and "instances" in item for item in content):
            return _mmpose_file(_one_frame(content, path, ""), path, "")
        if all(isinstance(item, dict) and "keypoints" in item for item in content):
            return _coco_file(content, path)
    raise KeypointFileError(
        path, None, "not a keypoint file fitkit knows: expected OpenPose ({'people': [...]}), "
        "mmpose (a list of instances with 'keypoints' and 'keypoint_scores', "
        "{'predictions': ...} or {'meta_info': ..., 'instance_info': ...}) or COCO results "
        "(a list of {'image_id': ..., 'keypoints': [x, y, v, ...]})")


def _mmpose_meta(meta: Any, path: Path) -> tuple[str | None, int]:
    """The format an mmpose ``meta_info`` names (``None`` without one) and its
    ``num_keypoints`` (0 when absent)."""
    if meta is None:
        return None, 0
    if not isinstance(meta, dict):
        raise KeypointFileError(path, "meta_info", f"expected a dict, got {type(meta).__name__}")
    count = meta.get("num_keypoints", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise KeypointFileError(path, "meta_info.num_keypoints",
                                f"expected a whole number, got {count!r}")
    dataset = meta.get("dataset_name")
    if dataset is None:
        return None, count
    if dataset not in MMPOSE_DATASETS:
        raise KeypointFileError(
            path, "meta_info.dataset_name",
            f"mmpose dataset {dataset!r} is not a keypoint format fitkit reads (it reads "
            f"{', '.join(f'{name} as {fmt}' for name, fmt in MMPOSE_DATASETS.items())}; "
            "other detectors' points can be given as arrays with format=...)")
    named = MMPOSE_DATASETS[dataset]
    if count and count != KEYPOINT_FORMATS[named].count:
        raise KeypointFileError(path, "meta_info.num_keypoints",
                                f"{count}, but dataset {dataset!r} has "
                                f"{KEYPOINT_FORMATS[named].count} points")
    return named, count or KEYPOINT_FORMATS[named].count


def _one_frame(value: Any, path: Path, field: str) -> list[Any]:
    """The instances of a list that holds either instances or ``{"frame_id", "instances"}``
    frames (one frame only: a keypoint file is one image)."""
    where = field or "(top level)"
    if not isinstance(value, list):
        raise KeypointFileError(path, where, f"expected a list, got {type(value).__name__}")
    if not any(isinstance(item, dict) and "instances" in item for item in value):
        return value
    if len(value) != 1:
        raise KeypointFileError(path, where, f"holds {len(value)} video frames; fitkit reads "
                                "one image per keypoint file")
    frame = value[0]
    return frame["instances"] if isinstance(frame, dict) else frame


def _mmpose_file(instances: Any, path: Path, field: str, named: str | None = None,
                 meta_count: int = 0) -> KeypointFile:
    """A :class:`KeypointFile` from mmpose instances ``[{"keypoints": [[x, y], ...],
    "keypoint_scores": [...]}, ...]``."""
    if not isinstance(instances, list):
        raise KeypointFileError(path, field or "(top level)",
                                f"expected a list of instances, got {type(instances).__name__}")
    people = []
    for index, instance in enumerate(instances):
        where = f"{field}[{index}]"
        if not isinstance(instance, dict):
            raise KeypointFileError(path, where, "expected an instance (a dict)")
        for key in ("keypoints", "keypoint_scores"):
            if key not in instance:
                raise KeypointFileError(path, f"{where}.{key}", "missing")
        points = _numbers(instance["keypoints"], path, f"{where}.keypoints", width=2)
        scores = _numbers(instance["keypoint_scores"], path, f"{where}.keypoint_scores")
        if len(scores) != len(points):
            raise KeypointFileError(path, f"{where}.keypoint_scores",
                                    f"{len(scores)} scores for {len(points)} keypoints")
        people.append(np.concatenate([points, scores[:, None]], axis=1))
    return _people(people, path, field or "(top level)", named, meta_count, "mmpose")


def _coco_file(results: list[Any], path: Path) -> KeypointFile:
    """A :class:`KeypointFile` from COCO results ``[{"image_id", "keypoints": [x, y, v, ...]}]``."""
    images = {str(item["image_id"]) for item in results if "image_id" in item}
    if len(images) > 1:
        raise KeypointFileError(path, "image_id", f"detections of {len(images)} images "
                                f"({', '.join(sorted(images)[:3])}, ...); fitkit reads one image "
                                "per keypoint file")
    people = []
    for index, item in enumerate(results):
        field = f"[{index}].keypoints"
        flat = _numbers(item["keypoints"], path, field)
        if len(flat) % 3:
            raise KeypointFileError(path, field, f"expected x, y, v triples, got {len(flat)} "
                                    "numbers")
        person = flat.reshape(-1, 3)
        person[:, 2] = np.clip(person[:, 2], 0.0, 1.0)
        people.append(person)
    return _people(people, path, "keypoints", None, 0, "coco")


def _people(people: list[np.ndarray], path: Path, field: str, named: str | None,
            meta_count: int, layout: str) -> KeypointFile:
    """People of one count, missing points zeroed, the count checked against the formats."""
    counts = {len(person) for person in people}
    if len(counts) > 1:
        raise KeypointFileError(path, field, f"people with different keypoint counts "
                                f"{sorted(counts)}")
    count = counts.pop() if counts else meta_count
    if count and named is None and count not in FORMAT_BY_COUNT:
        raise KeypointFileError(path, field, f"{count} keypoints per person fit no format "
                                f"fitkit reads ({formats_summary()})")
    if count and named is not None and count != KEYPOINT_FORMATS[named].count:
        raise KeypointFileError(path, field, f"{count} keypoints per person, but the file's "
                                f"dataset is {named!r} ({KEYPOINT_FORMATS[named].count})")
    array = np.zeros((len(people), count, 3), dtype=np.float32)
    for index, person in enumerate(people):
        finite = np.isfinite(person).all(axis=1)
        array[index][finite] = person[finite]
    return KeypointFile(array, named, layout)


def _numbers(values: Any, path: Path, field: str, width: int | None = None) -> np.ndarray:
    """A list of numbers (``width=None``) or of ``width``-number lists as a float64 array;
    non-finite values stay (the caller zeroes those points)."""
    if not isinstance(values, list):
        raise KeypointFileError(path, field, f"expected a list, got {type(values).__name__}")
    rows = values if width is not None else [values]
    for row in rows:
        if width is not None and (not isinstance(row, list) or len(row) != width):
            got = f"{len(row)} numbers" if isinstance(row, list) else repr(row)
            raise KeypointFileError(path, field, f"expected [x, y] pairs (2D keypoints), got "
                                    f"{got}")
        for value in row:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise KeypointFileError(path, field, f"expected numbers, got {value!r}")
    array = np.array(values, dtype=np.float64)
    return array.reshape(-1, width) if width is not None else array

