"""Synthetic SMPL body poses: anatomical joint limits and activity templates.

Every body joint (SMPL joints 1–23) is described by three *components* in its local frame, which at
zero pose is the canonical body frame (y up, the body faces +z, its left is +x). One axis is the
joint's *twist* axis (the bone's direction: y for the legs, spine, neck and head; x for the collars
and arms); the component along it is the twist angle, the other two are the swing rotation vector
perpendicular to it. The joint rotation is ``R = exp(swing) · exp(twist)`` (twist first), so the
decomposition is unique while the swing angle stays below 180°.

Signs (left side; the right side mirrors the y and z components):

- hip: x < 0 flexion (thigh forward), z > 0 abduction, y > 0 external rotation;
- knee: x > 0 flexion (shank backward); ankle: x > 0 plantarflexion, z < 0 inversion;
- foot (toes): x > 0 toe flexion; spine, neck, head: x > 0 flexion (bend forward);
- collar: z > 0 elevation, y < 0 protraction; shoulder: z > 0 raises the arm above the T-pose
  (−90° = arm at the side), y < 0 flexion (arm forward), x < 0 external rotation;
- elbow: y < 0 flexion (forearm forward); wrist: z < 0 flexion (palm side, the T-pose palm faces
  down); hand: z < 0 finger flexion.

Poses are sampled from activity templates (a mean, cyclic terms with a random phase, per-sample
Gaussian variation) and clamped to the joint limits; half of them are mirrored left ↔ right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from fitkit.geometry.rotations import (
    axis_angle_to_quaternion,
    compose_axis_angle,
    quaternion_conjugate,
    quaternion_product,
    quaternion_to_axis_angle,
)

JOINT_NAMES: tuple[str, ...] = (
    "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar",
    "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
    "right_wrist", "left_hand", "right_hand",
)
"""The 23 body joints of ``body_pose`` (SMPL joints 1–23, in order)."""

NUM_JOINTS = len(JOINT_NAMES)

# Per joint kind: twist axis (0 = x, 1 = y, 2 = z) and, for the left side or the centre,
# (low, high) limits in degrees of the x, y and z components.
_JOINT_KINDS: dict[str, tuple[int, tuple[tuple[float, float], ...]]] = {
    "hip": (1, ((-125.0, 25.0), (-40.0, 40.0), (-25.0, 50.0))),
    "knee": (1, ((-3.0, 145.0), (-10.0, 10.0), (-5.0, 5.0))),
    "ankle": (1, ((-30.0, 45.0), (-15.0, 15.0), (-25.0, 25.0))),
    "foot": (1, ((-45.0, 25.0), (-5.0, 5.0), (-5.0, 5.0))),
    "spine1": (1, ((-20.0, 40.0), (-15.0, 15.0), (-15.0, 15.0))),
    "spine2": (1, ((-15.0, 30.0), (-15.0, 15.0), (-12.0, 12.0))),
    "spine3": (1, ((-15.0, 25.0), (-15.0, 15.0), (-12.0, 12.0))),
    "neck": (1, ((-30.0, 40.0), (-40.0, 40.0), (-25.0, 25.0))),
    "head": (1, ((-30.0, 30.0), (-35.0, 35.0), (-20.0, 20.0))),
    "collar": (0, ((-15.0, 15.0), (-15.0, 15.0), (-10.0, 25.0))),
    "shoulder": (0, ((-60.0, 60.0), (-100.0, 45.0), (-95.0, 80.0))),
    "elbow": (0, ((-50.0, 50.0), (-150.0, 5.0), (-5.0, 5.0))),
    "wrist": (0, ((-40.0, 40.0), (-25.0, 25.0), (-70.0, 60.0))),
    "hand": (0, ((-10.0, 10.0), (-10.0, 10.0), (-60.0, 15.0))),
}

# Anatomical motions: name -> (joint kind, component, sign on the left side / centre).
MOTIONS: dict[str, tuple[str, int, float]] = {
    "hip_flexion": ("hip", 0, -1.0),
    "hip_external_rotation": ("hip", 1, 1.0),
    "hip_abduction": ("hip", 2, 1.0),
    "knee_flexion": ("knee", 0, 1.0),
    "ankle_plantarflexion": ("ankle", 0, 1.0),
    "ankle_inversion": ("ankle", 2, -1.0),
    "toe_flexion": ("foot", 0, 1.0),
    "spine_flexion": ("spine", 0, 1.0),
    "spine_twist": ("spine", 1, 1.0),
    "spine_lateral_bend": ("spine", 2, 1.0),
    "neck_flexion": ("neck", 0, 1.0),
    "head_flexion": ("head", 0, 1.0),
    "head_turn": ("head", 1, 1.0),
    "collar_elevation": ("collar", 2, 1.0),
    "collar_protraction": ("collar", 1, -1.0),
    "shoulder_external_rotation": ("shoulder", 0, -1.0),
    "shoulder_flexion": ("shoulder", 1, -1.0),
    "shoulder_abduction": ("shoulder", 2, 1.0),
    "elbow_flexion": ("elbow", 1, -1.0),
    "elbow_twist": ("elbow", 0, 1.0),
    "wrist_flexion": ("wrist", 2, -1.0),
    "finger_flexion": ("hand", 2, -1.0),
}
"""Anatomical motions in degrees: ``name -> (joint kind, component, sign on the left side)``.

A motion of a sided joint applies to both sides (mirrored); ``spine_*`` applies to spine1–3."""


def _kind(name: str) -> str:
    return name.removeprefix("left_").removeprefix("right_")


def _mirror_signs() -> torch.Tensor:
    """(23, 3): +1, or −1 for the y and z components of right-side joints."""
    signs = torch.ones(NUM_JOINTS, 3, dtype=torch.float64)
    for j, name in enumerate(JOINT_NAMES):
        if name.startswith("right_"):
            signs[j, 1:] = -1.0
    return signs


def _limit_table() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Twist axes (23,) int64 and lower/upper limits (23, 3) float64 in radians."""
    axes = torch.empty(NUM_JOINTS, dtype=torch.int64)
    low = torch.empty(NUM_JOINTS, 3, dtype=torch.float64)
    high = torch.empty(NUM_JOINTS, 3, dtype=torch.float64)
    mirror = _mirror_signs()
    for j, name in enumerate(JOINT_NAMES):
        axis, ranges = _JOINT_KINDS[_kind(name)]
        axes[j] = axis
        lo = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
        hi = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
        flipped = mirror[j] < 0
        low[j] = torch.where(flipped, -hi, lo)
        high[j] = torch.where(flipped, -lo, hi)
    return axes, low.deg2rad(), high.deg2rad()


TWIST_AXES, LOWER_LIMITS, UPPER_LIMITS = _limit_table()
"""Twist axis per joint (23,), lower and upper component limits (23, 3) in radians."""

# A left <-> right reflection (x -> -x) swaps the sides and maps a rotation vector (x, y, z) to
# (x, -y, -z).
_REFLECTION = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
_MIRROR_PERMUTATION = torch.tensor([
    JOINT_NAMES.index("right_" + n.removeprefix("left_") if n.startswith("left_")
                      else "left_" + n.removeprefix("right_") if n.startswith("right_") else n)
    for n in JOINT_NAMES
])


def motion_components(motions: dict[str, float], side: str = "both") -> torch.Tensor:
    """Joint components (23, 3) in radians, float64, from anatomical motions in degrees.

    Args:
        motions: ``{motion name: degrees}`` with names from :data:`MOTIONS`.
        side: ``"both"``, ``"left"`` or ``"right"``: which side a sided motion applies to.
    """
    if side not in ("both", "left", "right"):
        raise ValueError(f"side must be 'both', 'left' or 'right', got {side!r}")
    components = torch.zeros(NUM_JOINTS, 3, dtype=torch.float64)
    mirror = _mirror_signs()
    for motion, degrees in motions.items():
        if motion not in MOTIONS:
            raise KeyError(f"unknown motion {motion!r}; known: {sorted(MOTIONS)}")
        kind, axis, sign = MOTIONS[motion]
        for j, name in enumerate(JOINT_NAMES):
            joint_side = "left" if name.startswith("left_") else (
                "right" if name.startswith("right_") else "centre")
            if not _kind(name).startswith(kind):
                continue
            if joint_side != "centre" and side not in ("both", joint_side):
                continue
            components[j, axis] += math.radians(degrees) * sign * mirror[j, axis]
    return components


def body_pose_from_components(components: torch.Tensor) -> torch.Tensor:
    """Axis-angle body pose from swing/twist components.

    Args:
        components: (..., 23, 3) radians; the twist-axis entry is the twist angle, the others the
            swing rotation vector.

    Returns:
        (..., 69) axis-angle body pose.
    """
    twist_mask = torch.nn.functional.one_hot(TWIST_AXES, 3).to(components)
    twist = components * twist_mask
    swing = components - twist
    rotvec = compose_axis_angle([swing, twist])
    return rotvec.flatten(-2)


def components_from_body_pose(body_pose: torch.Tensor) -> torch.Tensor:
    """Swing/twist components (..., 23, 3) in radians from an axis-angle body pose (..., 69)."""
    quat = axis_angle_to_quaternion(body_pose.unflatten(-1, (NUM_JOINTS, 3)))  # xyzw
    quat = torch.where(quat[..., 3:] < 0, -quat, quat)
    axis = torch.nn.functional.one_hot(TWIST_AXES, 3).to(quat)
    along = (quat[..., :3] * axis).sum(-1, keepdim=True)
    twist_angle = 2.0 * torch.atan2(along, quat[..., 3:])
    twist_quat = torch.cat([axis * along, quat[..., 3:]], dim=-1)
    twist_quat = twist_quat / twist_quat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    swing = quaternion_to_axis_angle(quaternion_product(quat, quaternion_conjugate(twist_quat)))
    swing = swing * (1.0 - axis)
    return swing + axis * twist_angle


def within_limits(body_pose: torch.Tensor, tolerance_deg: float = 0.1) -> torch.Tensor:
    """Whether every joint of each pose lies within the anatomical limits.

    Args:
        body_pose: (N, 69) axis-angle.
        tolerance_deg: slack on every limit, degrees.

    Returns:
        (N,) bool.
    """
    components = components_from_body_pose(body_pose)
    tol = math.radians(tolerance_deg)
    low = LOWER_LIMITS.to(components) - tol
    high = UPPER_LIMITS.to(components) + tol
    return ((components >= low) & (components <= high)).flatten(-2).all(-1)


@dataclass(frozen=True)
class Activity:
    """An activity template, all values anatomical motions in degrees (see :data:`MOTIONS`).

    Attributes:
        mean: motions applied to both sides.
        cyclic: amplitudes of ``sin(phase)`` terms, left side at ``phase``, right at ``phase + π``.
        left: extra motions of the left side only (an asymmetric template; samples are mirrored
            at random, so either side ends up doing it).
        right: extra motions of the right side only.
        variation: scale of the per-sample Gaussian variation (1 = 12% of each joint's range).
    """

    mean: dict[str, float]
    cyclic: dict[str, float] = field(default_factory=dict)
    left: dict[str, float] = field(default_factory=dict)
    right: dict[str, float] = field(default_factory=dict)
    variation: float = 1.0


ACTIVITIES: dict[str, Activity] = {
    "standing": Activity(
        mean={"shoulder_abduction": -75, "elbow_flexion": 15, "knee_flexion": 5,
              "wrist_flexion": 5, "finger_flexion": 10},
    ),
    "walking": Activity(
        mean={"shoulder_abduction": -75, "elbow_flexion": 25, "hip_flexion": 10,
              "knee_flexion": 25, "finger_flexion": 10},
        cyclic={"hip_flexion": 22, "knee_flexion": 18, "shoulder_flexion": -20,
                "ankle_plantarflexion": -8, "elbow_flexion": -8},
        variation=0.8,
    ),
    "running": Activity(
        mean={"shoulder_abduction": -70, "elbow_flexion": 85, "hip_flexion": 25,
              "knee_flexion": 60, "spine_flexion": 6, "finger_flexion": 30},
        cyclic={"hip_flexion": 35, "knee_flexion": 40, "shoulder_flexion": -35,
                "ankle_plantarflexion": -15},
        variation=0.8,
    ),
    "sitting": Activity(
        mean={"hip_flexion": 85, "knee_flexion": 90, "shoulder_abduction": -70,
              "shoulder_flexion": 25, "elbow_flexion": 50, "spine_flexion": 5,
              "hip_abduction": 8, "finger_flexion": 15},
    ),
    "reaching": Activity(
        mean={"spine_flexion": 8, "knee_flexion": 8, "spine_twist": 8},
        left={"shoulder_flexion": 75, "shoulder_abduction": -25, "elbow_flexion": 15,
              "collar_protraction": 10},
        right={"shoulder_abduction": -75, "elbow_flexion": 20},
    ),
    "crouching": Activity(
        mean={"hip_flexion": 110, "knee_flexion": 125, "ankle_plantarflexion": -22,
              "spine_flexion": 20, "shoulder_abduction": -55, "shoulder_flexion": 40,
              "elbow_flexion": 45, "hip_abduction": 15, "head_flexion": -10},
        variation=0.8,
    ),
    "arms_raised": Activity(
        mean={"shoulder_abduction": 55, "elbow_flexion": 20, "collar_elevation": 15,
              "knee_flexion": 5, "head_flexion": -8},
    ),
}
"""Activity templates of :func:`sample_body_pose`."""

_VARIATION_FRACTION = 0.12


def _template_tensors(activity: Activity) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean components (23, 3) and cyclic amplitudes (23, 3) (left +, right −) of a template."""
    mean = (motion_components(activity.mean) + motion_components(activity.left, "left")
            + motion_components(activity.right, "right"))
    cyclic = (motion_components(activity.cyclic, "left")
              - motion_components(activity.cyclic, "right"))
    return mean, cyclic


def sample_body_pose(
    n: int,
    generator: torch.Generator | None = None,
    activities: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sample plausible SMPL body poses.

    Each sample picks an activity uniformly, evaluates its template at a random phase, adds
    Gaussian variation, clamps to the joint limits and is mirrored left ↔ right with probability ½.
    Deterministic for a given generator state.

    Args:
        n: number of poses.
        generator: a CPU ``torch.Generator`` (seed it for reproducible poses).
        activities: names from :data:`ACTIVITIES` to draw from (all when ``None``).
        dtype: output dtype.

    Returns:
        (n, 69) axis-angle body poses (joints 1–23, SMPL order), within :func:`within_limits`.
    """
    names = list(ACTIVITIES) if activities is None else list(activities)
    unknown = [a for a in names if a not in ACTIVITIES]
    if unknown or not names:
        raise ValueError(f"unknown activities {unknown}; known: {sorted(ACTIVITIES)}")
    templates = [_template_tensors(ACTIVITIES[a]) for a in names]
    means = torch.stack([t[0] for t in templates])  # (A, 23, 3)
    cyclics = torch.stack([t[1] for t in templates])
    variation = torch.tensor([ACTIVITIES[a].variation for a in names], dtype=torch.float64)

    kw = {"generator": generator, "dtype": torch.float64}
    index = torch.randint(len(names), (n,), generator=generator)
    phase = torch.rand(n, 1, 1, **kw) * (2.0 * math.pi)
    noise = torch.randn(n, NUM_JOINTS, 3, **kw)
    mirror = torch.rand(n, **kw) < 0.5

    sigma = _VARIATION_FRACTION * (UPPER_LIMITS - LOWER_LIMITS)
    components = (means[index] + cyclics[index] * torch.sin(phase)
                  + noise * sigma * variation[index, None, None])
    components = torch.minimum(torch.maximum(components, LOWER_LIMITS), UPPER_LIMITS)
    mirrored = components[:, _MIRROR_PERMUTATION] * _REFLECTION
    components = torch.where(mirror[:, None, None], mirrored, components)
    return body_pose_from_components(components).to(dtype)


def twist_beyond_limits(
    body_pose: torch.Tensor,
    num_joints: int = 2,
    generator: torch.Generator | None = None,
    margin_deg: tuple[float, float] = (30.0, 60.0),
) -> torch.Tensor:
    """Rotate ``num_joints`` random joints of each pose beyond their anatomical limits.

    For each chosen joint one random component (swing or twist) is set past its lower or upper
    limit by a margin drawn uniformly from ``margin_deg`` (capped at 170°). Used to build the
    implausible half of a prior's ROC test.

    Args:
        body_pose: (N, 69) axis-angle poses.
        num_joints: distinct joints changed per pose.
        generator: a CPU ``torch.Generator``.
        margin_deg: (low, high) margin beyond the limit, degrees.

    Returns:
        (N, 69) axis-angle poses, none of them :func:`within_limits`.
    """
    n = body_pose.shape[0]
    kw = {"generator": generator, "dtype": torch.float64}
    components = components_from_body_pose(body_pose.detach().cpu().double())
    joints = torch.rand(n, NUM_JOINTS, **kw).argsort(dim=1)[:, :num_joints]  # (N, k)
    axes = torch.randint(3, (n, num_joints), generator=generator)
    upper = torch.rand(n, num_joints, **kw) < 0.5
    margin = torch.deg2rad(margin_deg[0] + (margin_deg[1] - margin_deg[0])
                           * torch.rand(n, num_joints, **kw))
    value = torch.where(upper, UPPER_LIMITS[joints, axes] + margin,
                        LOWER_LIMITS[joints, axes] - margin)
    value = value.clamp(-math.radians(170.0), math.radians(170.0))
    rows = torch.arange(n)[:, None].expand(n, num_joints)
    components[rows, joints, axes] = value
    # Keep each changed joint's swing angle below 175° (so it stays a unique swing) by shrinking
    # the swing component that was not changed.
    chosen = components[rows, joints]  # (N, k, 3)
    twist_axis = torch.nn.functional.one_hot(TWIST_AXES[joints], 3).bool()
    changed = torch.nn.functional.one_hot(axes, 3).bool()
    other = ~(twist_axis | changed)
    twisted = (axes == TWIST_AXES[joints])[..., None]
    room = math.radians(175.0) ** 2 - torch.where(twisted, 0.0, value[..., None]) ** 2
    bound = room.clamp_min(0.0).sqrt()
    shrunk = torch.where(other, chosen.clamp(-bound, bound), chosen)
    components[rows, joints] = shrunk
    return body_pose_from_components(components).to(body_pose)
