"""OpenPose JSON files: BODY_25 ``pose_keypoints_2d`` of each person.

A file holds ``{"version": ..., "people": [{"pose_keypoints_2d": [x0, y0, c0, x1, ...], ...}]}``
with 25 ``(x, y, confidence)`` triples per person, in pixels ``(u = column, v = row)``.
OpenPose writes ``0, 0, 0`` for a keypoint it did not find.

Policies, chosen for fitting a dataset where one bad image must not stop the others:

- **No person**: ``read_openpose_people`` returns an empty ``(0, 25, 3)`` array;
  ``read_openpose`` (one person) raises ``NoPersonError``, a subclass of ``OpenPoseError`` the
  caller catches to flag the image and go on.
- **NaN / infinity** (not valid JSON, but Python's reader accepts ``NaN``): a keypoint with any
  non-finite value is treated as missing and becomes ``0, 0, 0``. Writing does the same, so
  written files are strict JSON.
- **Malformed content** (not JSON, no ``people`` list, a person without
  ``pose_keypoints_2d``, not 75 numbers): ``OpenPoseError`` naming the file and the field.

Choosing a person (:func:`select_person`, :func:`person_boxes`) works on the people of any
keypoint format, ``(P, K, 3)``; other detectors' files are read by
:mod:`fitkit.io.keypoint_formats`, whose errors share the base :class:`KeypointFileError`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

NUM_BODY25 = 25
"""Keypoints per person in OpenPose's BODY_25 layout."""


class KeypointFileError(ValueError):
    """A malformed keypoint file (OpenPose's, or another detector's:
    :mod:`fitkit.io.keypoint_formats`).

    Attributes:
        path: the file.
        field: the offending field (e.g. ``people[1].pose_keypoints_2d``), or ``None``.
    """

    def __init__(self, path: str | os.PathLike, field: str | None, message: str) -> None:
        self.path = str(path)
        self.field = field
        where = f"{self.path}: field '{field}'" if field is not None else self.path
        super().__init__(f"{where}: {message}")


class OpenPoseError(KeypointFileError):
    """A malformed OpenPose file, or a person that cannot be picked from a keypoint file."""


class NoPersonError(OpenPoseError):
    """No person to return: the file lists nobody, or nobody overlaps the requested box."""


def read_openpose_people(path: str | os.PathLike) -> np.ndarray:
    """All people of an OpenPose JSON file.

    Args:
        path: the ``*_keypoints.json`` file.
    Returns:
        ``(P, 25, 3)`` float32 ``(u, v, confidence)`` per person; P may be 0.
    Raises:
        FileNotFoundError: no such file.
        OpenPoseError: malformed content (the message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OpenPose file not found: {path}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OpenPoseError(path, None, f"not a JSON file ({error})") from error
    return openpose_people(content, path)


def openpose_people(content: Any, path: str | os.PathLike) -> np.ndarray:
    """All people of the parsed content of an OpenPose JSON file.

    Args:
        content: what ``json.loads`` returned for the file.
        path: the file, for messages.
    Returns:
        ``(P, 25, 3)`` float32 ``(u, v, confidence)`` per person; P may be 0.
    Raises:
        OpenPoseError: malformed content (the message names the file and the field).
    """
    path = Path(path)
    if not isinstance(content, dict) or "people" not in content:
        raise OpenPoseError(path, "people", "missing (not an OpenPose keypoint file)")
    people = content["people"]
    if not isinstance(people, list):
        raise OpenPoseError(path, "people", f"expected a list, got {type(people).__name__}")
    result = np.zeros((len(people), NUM_BODY25, 3), dtype=np.float32)
    for index, person in enumerate(people):
        field = f"people[{index}].pose_keypoints_2d"
        if not isinstance(person, dict) or "pose_keypoints_2d" not in person:
            raise OpenPoseError(path, field, "missing")
        result[index] = _keypoints(person["pose_keypoints_2d"], path, field)
    return result


def read_openpose(
    path: str | os.PathLike,
    person: int | None = None,
    box: Sequence[float] | None = None,
    min_confidence: float = 0.1,
) -> np.ndarray:
    """One person of an OpenPose JSON file.

    Args:
        path: the ``*_keypoints.json`` file.
        person: index of the person in the file. Default: by ``box`` if given, else the
            largest person (see ``select_person``).
        box: ``(x0, y0, x1, y1)`` pixels; picks the person whose keypoint box has the largest
            IoU with it.
        min_confidence: keypoints at or below this confidence do not count for the choice.
    Returns:
        ``(25, 3)`` float32 ``(u, v, confidence)``.
    Raises:
        FileNotFoundError: no such file.
        NoPersonError: nobody in the file, or nobody overlapping ``box``.
        OpenPoseError: malformed content, or ``person`` out of range.
    """
    people = read_openpose_people(path)
    return people[select_person(people, person, box, min_confidence, source=path)]


def person_boxes(people: np.ndarray, min_confidence: float = 0.1) -> np.ndarray:
    """Bounding boxes of each person's confident keypoints.

    Args:
        people: ``(P, K, 3)`` keypoints (any format).
        min_confidence: keypoints at or below it are ignored.
    Returns:
        ``(P, 4)`` ``(x0, y0, x1, y1)``; all zero for a person without confident keypoints.
    """
    confident = people[..., 2] > min_confidence
    uv = people[..., :2]
    low = np.where(confident[..., None], uv, np.inf).min(axis=1)
    high = np.where(confident[..., None], uv, -np.inf).max(axis=1)
    boxes = np.concatenate([low, high], axis=1)
    boxes[~confident.any(axis=1)] = 0.0
    return boxes


def select_person(
    people: np.ndarray,
    person: int | None = None,
    box: Sequence[float] | None = None,
    min_confidence: float = 0.1,
    source: str | os.PathLike = "<keypoints>",
) -> int:
    """Index of the person to fit among ``people``.

    By ``person`` (an index), else by ``box`` (largest IoU of the person's confident-keypoint
    box with ``box``), else the largest person (longest diagonal of that box; the first on ties).

    Args:
        people: ``(P, K, 3)`` keypoints (any format).
        person, box: see above; not both.
        min_confidence: keypoints at or below it do not count for boxes.
        source: the file, for error messages.
    Raises:
        NoPersonError: P is 0, or no person overlaps ``box``.
        OpenPoseError: ``person`` out of range.
        ValueError: both ``person`` and ``box`` given.
    """
    if person is not None and box is not None:
        raise ValueError("select a person by index or by box, not both")
    if len(people) == 0:
        raise NoPersonError(source, "people", "no person in the file")
    if person is not None:
        if not -len(people) <= person < len(people):
            raise OpenPoseError(
                source, "people", f"person {person} requested, the file has {len(people)}"
            )
        return person % len(people)
    boxes = person_boxes(people, min_confidence)
    if box is None:
        return int(np.argmax(np.hypot(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (4,):
        raise ValueError(f"box must be (x0, y0, x1, y1), got shape {box.shape}")
    iou = _iou(boxes, box)
    if not (iou > 0).any():
        raise NoPersonError(source, "people", f"no person overlaps the box {box.tolist()}")
    return int(np.argmax(iou))


def write_openpose(path: str | os.PathLike, keypoints: np.ndarray) -> None:
    """Write an OpenPose JSON file (version 1.3 layout, body keypoints only).

    Args:
        path: the file to write (parent folders are created).
        keypoints: ``(25, 3)`` one person or ``(P, 25, 3)`` people, ``(u, v, confidence)``;
            keypoints with non-finite values are written as ``0, 0, 0``.
    Raises:
        ValueError: wrong shape.
    """
    people = np.asarray(keypoints, dtype=np.float64)
    if people.ndim == 2:
        people = people[None]
    if people.ndim != 3 or people.shape[1:] != (NUM_BODY25, 3):
        raise ValueError(f"keypoints must have shape (25, 3) or (P, 25, 3), got {people.shape}")
    people = np.where(np.isfinite(people).all(axis=-1, keepdims=True), people, 0.0)
    content = {
        "version": 1.3,
        "people": [
            {
                "person_id": [-1],
                "pose_keypoints_2d": [float(value) for value in row.ravel()],
                "face_keypoints_2d": [],
                "hand_left_keypoints_2d": [],
                "hand_right_keypoints_2d": [],
                "pose_keypoints_3d": [],
                "face_keypoints_3d": [],
                "hand_left_keypoints_3d": [],
                "hand_right_keypoints_3d": [],
            }
            for row in people
        ],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, allow_nan=False), encoding="utf-8")


def _keypoints(values: Any, path: Path, field: str) -> np.ndarray:
    """``(25, 3)`` from a flat list of 75 numbers; non-finite keypoints become zeros."""
    if not isinstance(values, list):
        raise OpenPoseError(path, field, f"expected a list, got {type(values).__name__}")
    if len(values) != 3 * NUM_BODY25:
        raise OpenPoseError(
            path, field, f"expected {3 * NUM_BODY25} numbers (BODY_25), got {len(values)}"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OpenPoseError(path, field, f"expected numbers, got {value!r}")
    rows = [values[i : i + 3] for i in range(0, len(values), 3)]
    rows = [row if all(math.isfinite(v) for v in row) else [0.0, 0.0, 0.0] for row in rows]
    return np.asarray(rows, dtype=np.float32)


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``(P,)`` IoU of ``(P, 4)`` boxes with one ``(4,)`` box."""
    width = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    height = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    intersection = width * height
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
