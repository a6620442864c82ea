"""Surface annotations of the open body for ``build_open``: DensePose parts, vertex keypoints,
mocap-style markers. All rules are geometric, on the T-posed mean mesh in SMPL's frame
(y up, faces +z, left +x); ``docs/open_body.md`` states them in words.
"""

from __future__ import annotations

import numpy as np

from fitkit.body.keypoints import SMPL_JOINT_NAMES

J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}

# --------------------------------------------------------------------------- DensePose parts

_TORSO = ("pelvis", "spine1", "spine2", "spine3", "left_collar", "right_collar")


def _part_of_joint(name: str) -> str:
    """DensePose body part of the vertices a SMPL joint dominates."""
    side, _, limb = name.partition("_")
    if name in _TORSO:
        return "torso"
    if name in ("neck", "head"):
        return "head"
    limb_part = {"hip": "upper_leg", "knee": "lower_leg", "ankle": "foot", "foot": "foot",
                 "shoulder": "upper_arm", "elbow": "lower_arm", "wrist": "hand", "hand": "hand"}
    return f"{side}_{limb_part[limb]}"


# DensePose numbering (the person's own left/right): (front, back) for split parts.
_DP_INDEX: dict[str, tuple[int, int] | int] = {
    "torso": (2, 1),
    "right_hand": 3,
    "left_hand": 4,
    "left_foot": 5,
    "right_foot": 6,
    "right_upper_leg": (9, 7),
    "left_upper_leg": (10, 8),
    "right_lower_leg": (13, 11),
    "left_lower_leg": (14, 12),
    "left_upper_arm": (15, 17),
    "right_upper_arm": (16, 18),
    "left_lower_arm": (19, 21),
    "right_lower_arm": (20, 22),
    "head": (24, 23),  # (left side, right side)
}


def _part_axis(part: str) -> tuple[list[str], np.ndarray]:
    """Joints of the polyline a part's U runs along, and the direction its angle starts from."""
    side, _, limb = part.partition("_")
    chains = {
        "torso": ["pelvis", "spine1", "spine2", "spine3", "neck"],
        "head": ["neck", "head"],
        "upper_leg": [f"{side}_hip", f"{side}_knee"],
        "lower_leg": [f"{side}_knee", f"{side}_ankle"],
        "foot": [f"{side}_ankle", f"{side}_foot"],
        "upper_arm": [f"{side}_shoulder", f"{side}_elbow"],
        "lower_arm": [f"{side}_elbow", f"{side}_wrist"],
        "hand": [f"{side}_wrist", f"{side}_hand"],
    }
    chain = chains[part] if part in chains else chains[limb]
    start = np.array([0.0, 1.0, 0.0]) if limb == "foot" else np.array([0.0, 0.0, 1.0])
    return chain, start


def _project_on_chain(points: np.ndarray, chain: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Arc-length parameter, radial vector and segment direction of points near a polyline.

    The first and last segments extend beyond their ends (fingers, toes, the top of the head).
    """
    best = np.full(len(points), np.inf)
    arc = np.zeros(len(points))
    radial = np.zeros_like(points)
    direction = np.zeros_like(points)
    travelled = 0.0
    last = len(chain) - 2
    for index, (a, b) in enumerate(zip(chain[:-1], chain[1:], strict=True)):
        segment = b - a
        length = np.linalg.norm(segment)
        unit = segment / length
        low = -np.inf if index == 0 else 0.0
        high = np.inf if index == last else length
        t = np.clip((points - a) @ unit, low, high)
        foot = a + t[:, None] * unit
        distance = np.linalg.norm(points - foot, axis=1)
        closer = distance < best
        best[closer] = distance[closer]
        arc[closer] = travelled + t[closer]
        radial[closer] = (points - foot)[closer]
        direction[closer] = unit
        travelled += length
    return arc, radial, direction


def densepose_parts(vertices: np.ndarray, joints: np.ndarray,
                    weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DensePose-style (I, U, V) for every vertex of the T-posed mean mesh.

    The part is that of the vertex's dominant skinning joint. U is the normalised arc length
    along the part's joint chain; the angle around the chain (0 = facing +z, or +y for feet)
    splits limbs and torso into front (|angle| < 90 degrees) and back halves, the head into
    its left (+x) and right halves, and V is that angle normalised within the part.

    Args:
        vertices: ``(V, 3)`` mean T-posed vertices.
        joints: ``(24, 3)`` its joints.
        weights: ``(V, 24)`` skinning weights.
    Returns:
        ``dp_I`` ``(V,)`` uint8 in 1..24, ``dp_U`` and ``dp_V`` ``(V,)`` float in [0, 1].
    """
    dominant = np.argmax(weights, axis=1)
    part_names = np.array([_part_of_joint(name) for name in SMPL_JOINT_NAMES])[dominant]
    dp_i = np.zeros(len(vertices), dtype=np.uint8)
    dp_u = np.zeros(len(vertices))
    dp_v = np.zeros(len(vertices))
    for part, index in _DP_INDEX.items():
        rows = np.flatnonzero(part_names == part)
        chain_names, start = _part_axis(part)
        chain = joints[[J[name] for name in chain_names]]
        arc, radial, direction = _project_on_chain(vertices[rows], chain)
        first = start - np.sum(start * direction, axis=1, keepdims=True) * direction
        first /= np.linalg.norm(first, axis=1, keepdims=True)
        second = np.cross(direction, first)
        angle = np.arctan2(np.sum(radial * second, 1), np.sum(radial * first, 1))
        if part == "head":
            left = vertices[rows, 0] >= 0.0
            halves = [(left, index[0]), (~left, index[1])]
            wrapped = np.mod(angle, 2.0 * np.pi)
        elif isinstance(index, tuple):
            front = np.abs(angle) < np.pi / 2
            halves = [(front, index[0]), (~front, index[1])]
            wrapped = np.where(front, angle, np.mod(angle, 2.0 * np.pi))
        else:
            halves = [(np.ones(len(rows), dtype=bool), index)]
            wrapped = angle
        for mask, number in halves:
            dp_i[rows[mask]] = number
            dp_u[rows[mask]] = _normalise(arc[mask])
            dp_v[rows[mask]] = _normalise(wrapped[mask])
    return dp_i, dp_u, dp_v


def _normalise(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min() if len(values) else 1.0
    return (values - values.min()) / max(span, 1e-12) if len(values) else values


# --------------------------------------------------------------------------- vertex keypoints


def vertex_keypoints(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray,
                     dominant_bone: list[str], eyes: dict[str, np.ndarray]) -> dict[str, int]:
    """smplx's vertex keypoints (face, feet, finger tips) by geometric rules on the mean mesh.

    - nose: the most forward (+z) vertex dominated by the head joint;
    - eyes: the most forward vertex within 1 cm (in x and y) of the eyeball centre;
    - ears: the most lateral (x) head vertex between the eye centres' height and 6 cm below;
    - big / small toe: the most forward vertex of the big toe's / little toe's last bone;
    - heel: the rearmost (-z) foot vertex in the lowest 2 cm of that foot;
    - finger tips: the vertex of each finger's last bone farthest from the wrist joint.

    Args:
        vertices: ``(V, 3)`` mean T-posed vertices.
        joints: ``(24, 3)`` its joints.
        weights: ``(V, 24)`` skinning weights.
        dominant_bone: per vertex, the Anny bone with the largest skinning weight.
        eyes: ``"L"``/``"R"`` -> the eyeball centre ``(3,)``.
    Returns:
        keypoint name -> vertex index.
    """
    dominant = np.argmax(weights, axis=1)
    bones = np.asarray(dominant_bone)
    x, y, z = vertices.T
    ids: dict[str, int] = {}
    head = dominant == J["head"]
    ids["nose"] = _argmax(z, head)
    for side in ("R", "L"):
        eye = eyes[side]
        near = head & (np.abs(x - eye[0]) < 0.01) & (np.abs(y - eye[1]) < 0.01)
        ids[f"{side.lower()}eye"] = _argmax(z, near)
    eye_height = 0.5 * (eyes["L"][1] + eyes["R"][1])
    band = head & (y < eye_height) & (y > eye_height - 0.06)
    ids["rear"] = _argmax(-x, band)
    ids["lear"] = _argmax(x, band)
    for side, word in (("L", "left"), ("R", "right")):
        ids[f"{side}BigToe"] = _argmax(z, bones == f"toe1-2.{side}")
        ids[f"{side}SmallToe"] = _argmax(z, bones == f"toe5-3.{side}")
        foot = np.isin(dominant, [J[f"{word}_ankle"], J[f"{word}_foot"]])
        low = foot & (y < y[foot].min() + 0.02)
        ids[f"{side}Heel"] = _argmax(-z, low)
    fingers = ("thumb", "index", "middle", "ring", "pinky")
    for side, word in (("l", "left"), ("r", "right")):
        wrist = joints[J[f"{word}_wrist"]]
        distance = np.linalg.norm(vertices - wrist, axis=1)
        for number, finger in enumerate(fingers, start=1):
            mask = bones == f"finger{number}-3.{side.upper()}"
            ids[f"{side}{finger}"] = _argmax(distance, mask)
    return ids


def _argmax(values: np.ndarray, mask: np.ndarray) -> int:
    if not mask.any():
        raise ValueError("a keypoint rule selected no vertex")
    rows = np.flatnonzero(mask)
    return int(rows[np.argmax(values[rows])])


# --------------------------------------------------------------------------- markers

_X, _Y, _Z = np.eye(3)


def _marker_rules() -> list[tuple[str, list[tuple[str, float]], np.ndarray, np.ndarray]]:
    """(name, weighted joints of the ray's start, offset from it, ray direction) per marker.

    Sided markers are written for the left side (+x); the right side mirrors x.
    """
    down, up, front, back = -_Y, _Y, _Z, -_Z
    zero = np.zeros(3)
    sided = [
        ("FHD", [("head", 1.0)], 0.06 * _Y, front + 0.7 * _X),
        ("BHD", [("head", 1.0)], 0.06 * _Y, back + 0.7 * _X),
        ("CLA", [("left_collar", 0.5), ("left_shoulder", 0.5)], zero, up + 0.3 * front),
        ("BAK", [("spine3", 1.0)], 0.07 * _X, back),
        ("SHO", [("left_shoulder", 1.0)], zero, up),
        ("UPA", [("left_shoulder", 0.5), ("left_elbow", 0.5)], zero, back),
        ("BIC", [("left_shoulder", 0.5), ("left_elbow", 0.5)], zero, front),
        ("ELB", [("left_elbow", 1.0)], zero, up),
        ("ELBM", [("left_elbow", 1.0)], zero, down),
        ("FRM", [("left_elbow", 0.5), ("left_wrist", 0.5)], zero, back),
        ("WRA", [("left_wrist", 1.0)], zero, front),
        ("WRB", [("left_wrist", 1.0)], zero, back),
        ("FIN", [("left_hand", 1.0)], zero, up),
        ("PALM", [("left_wrist", 0.5), ("left_hand", 0.5)], zero, down),
        ("ASI", [("pelvis", 1.0)], 0.09 * _X + 0.04 * _Y, front),
        ("PSI", [("pelvis", 1.0)], 0.05 * _X + 0.04 * _Y, back),
        ("WAI", [("spine1", 1.0)], zero, _X),
        ("THI", [("left_hip", 0.5), ("left_knee", 0.5)], zero, _X),
        ("THF", [("left_hip", 0.5), ("left_knee", 0.5)], zero, front),
        ("KNE", [("left_knee", 1.0)], zero, _X),
        ("KNM", [("left_knee", 1.0)], zero, -_X),
        ("TIB", [("left_knee", 0.5), ("left_ankle", 0.5)], zero, _X),
        ("SHN", [("left_knee", 0.5), ("left_ankle", 0.5)], zero, front),
        ("ANK", [("left_ankle", 1.0)], zero, _X),
        ("ANM", [("left_ankle", 1.0)], zero, -_X),
        ("HEE", [("left_ankle", 1.0)], -0.03 * _Y, back),
        ("TOE", [("left_foot", 1.0)], zero, up + 0.5 * front),
        ("MT5", [("left_ankle", 0.4), ("left_foot", 0.6)], -0.03 * _Y, _X),
        ("MT1", [("left_ankle", 0.4), ("left_foot", 0.6)], -0.03 * _Y, -_X),
    ]
    rules = [
        ("ARIEL", [("head", 1.0)], zero, up),
        ("C7", [("neck", 1.0)], zero, back + 0.3 * down),
        ("T10", [("spine2", 1.0)], zero, back),
        ("CLAV", [("spine3", 0.3), ("neck", 0.7)], zero, front + 0.3 * down),
        ("STRN", [("spine2", 0.5), ("spine3", 0.5)], zero, front),
        ("NAVL", [("spine1", 1.0)], -0.03 * _Y, front),
        ("SACR", [("pelvis", 1.0)], 0.03 * _Y, back),
        ("CHIN", [("neck", 0.3), ("head", 0.7)], -0.04 * _Y, front + down),
    ]
    mirror = np.array([-1.0, 1.0, 1.0])
    for name, anchors, offset, direction in sided:
        rules.append((f"L{name}", anchors, offset, direction))
        right = [(joint.replace("left_", "right_"), w) for joint, w in anchors]
        rules.append((f"R{name}", right, offset * mirror, direction * mirror))
    return rules


def markers(vertices: np.ndarray, joints: np.ndarray,
            faces: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Mocap-style surface markers: where a ray from inside the body leaves the surface.

    Each marker's ray starts at a weighted mean of joints (plus an offset) and goes along a
    fixed direction (``_marker_rules``); the marker is the corner nearest to the ray's first
    crossing with the surface.

    Returns:
        names ``(M,)`` and vertex indices ``(M,)``.
    """
    names, ids = [], []
    corners = vertices[faces]
    for name, anchors, offset, direction in _marker_rules():
        origin = sum(w * joints[J[joint]] for joint, w in anchors) + offset
        unit = direction / np.linalg.norm(direction)
        hit = _first_hit(origin, unit, corners)
        face = faces[hit[0]]
        point = origin + hit[1] * unit
        names.append(name)
        ids.append(int(face[np.argmin(np.linalg.norm(vertices[face] - point, axis=1))]))
    return names, np.asarray(ids)


def _first_hit(origin: np.ndarray, direction: np.ndarray,
               corners: np.ndarray) -> tuple[int, float]:
    """Nearest triangle a ray crosses (Moller-Trumbore over all triangles)."""
    edge1 = corners[:, 1] - corners[:, 0]
    edge2 = corners[:, 2] - corners[:, 0]
    p = np.cross(direction, edge2)
    det = np.sum(edge1 * p, axis=1)
    safe = np.where(np.abs(det) < 1e-12, 1e-12, det)
    s = origin - corners[:, 0]
    u = np.sum(s * p, axis=1) / safe
    q = np.cross(s, edge1)
    v = (q @ direction) / safe
    t = np.sum(edge2 * q, axis=1) / safe
    valid = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
    if not valid.any():
        raise ValueError(f"marker ray from {origin} along {direction} hits no triangle")
    rows = np.flatnonzero(valid)
    best = rows[np.argmin(t[rows])]
    return int(best), float(t[best])
