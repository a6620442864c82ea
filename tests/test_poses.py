"""The synthetic pose sampler: anatomical signs (checked by forward kinematics), determinism and
joint limits."""

import pytest
import torch

from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.synth.poses import (
    ACTIVITIES,
    JOINT_NAMES,
    body_pose_from_components,
    components_from_body_pose,
    motion_components,
    sample_body_pose,
    twist_beyond_limits,
    within_limits,
)

SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# Plausible SMPL T-pose joint positions (meters, body frame: y up, facing +z, left = +x).
T_POSE_JOINTS = torch.tensor([
    [0.0, -0.22, 0.03], [0.06, -0.31, 0.02], [-0.06, -0.31, 0.02], [0.0, -0.11, 0.0],
    [0.11, -0.68, 0.02], [-0.11, -0.68, 0.02], [0.0, 0.03, 0.03], [0.07, -1.08, -0.02],
    [-0.07, -1.08, -0.02], [0.0, 0.08, 0.03], [0.12, -1.13, 0.10], [-0.12, -1.13, 0.10],
    [0.0, 0.29, 0.0], [0.08, 0.20, 0.0], [-0.08, 0.20, 0.0], [0.0, 0.36, 0.05],
    [0.17, 0.23, -0.01], [-0.17, 0.23, -0.01], [0.43, 0.21, -0.03], [-0.43, 0.21, -0.03],
    [0.69, 0.22, -0.03], [-0.69, 0.22, -0.03], [0.77, 0.21, -0.04], [-0.77, 0.21, -0.04],
], dtype=torch.float64)
JOINT = {name: i + 1 for i, name in enumerate(JOINT_NAMES)}  # SMPL joint index


def forward_kinematics(body_pose: torch.Tensor) -> torch.Tensor:
    """(69,) axis-angle (root fixed at identity) -> (24, 3) posed joint positions."""
    local = axis_angle_to_matrix(body_pose.view(23, 3))
    rotations = [torch.eye(3, dtype=torch.float64)]
    positions = [T_POSE_JOINTS[0]]
    for j in range(1, 24):
        p = SMPL_PARENTS[j]
        positions.append(positions[p] + rotations[p] @ (T_POSE_JOINTS[j] - T_POSE_JOINTS[p]))
        rotations.append(rotations[p] @ local[j - 1])
    return torch.stack(positions)


def displacement(motion: str, degrees: float, joint: str) -> torch.Tensor:
    """(3,) displacement of ``joint`` when ``motion`` is applied on both sides."""
    pose = body_pose_from_components(motion_components({motion: degrees}))
    return forward_kinematics(pose)[JOINT[joint]] - T_POSE_JOINTS[JOINT[joint]]


X, Y, Z = 0, 1, 2


@pytest.mark.parametrize(("motion", "degrees", "joint", "axis", "sign"), [
    ("knee_flexion", 60, "left_ankle", Z, -1),  # shank swings backward...
    ("knee_flexion", 60, "left_ankle", Y, +1),  # ...and the ankle rises
    ("knee_flexion", 60, "right_ankle", Z, -1),
    ("hip_flexion", 60, "left_knee", Z, +1),  # thigh forward
    ("hip_flexion", 60, "right_knee", Z, +1),
    ("hip_abduction", 30, "left_knee", X, +1),  # thigh away from the midline
    ("hip_abduction", 30, "right_knee", X, -1),
    ("ankle_plantarflexion", 30, "left_foot", Y, -1),  # toes down
    ("elbow_flexion", 90, "left_wrist", Z, +1),  # forearm forward
    ("elbow_flexion", 90, "right_wrist", Z, +1),
    ("shoulder_abduction", -80, "left_elbow", Y, -1),  # arm down towards the side
    ("shoulder_abduction", -80, "right_elbow", Y, -1),
    ("shoulder_abduction", 40, "left_elbow", Y, +1),  # arm up
    ("shoulder_flexion", 60, "left_elbow", Z, +1),  # arm forward
    ("shoulder_flexion", 60, "right_elbow", Z, +1),
    ("collar_elevation", 20, "left_shoulder", Y, +1),
    ("collar_protraction", 20, "right_shoulder", Z, +1),
    ("wrist_flexion", 45, "left_hand", Y, -1),  # palm side (down in the T-pose)
    ("spine_flexion", 20, "head", Z, +1),  # bend forward
    ("neck_flexion", 30, "head", Z, +1),
])
def test_anatomical_motion_moves_joint_the_right_way(motion, degrees, joint, axis, sign):
    moved = displacement(motion, degrees, joint)[axis]
    assert sign * moved > 0.02, f"{motion} moved {joint} by {moved:.3f} m along axis {axis}"


def test_external_rotation_raises_a_bent_forearm():
    components = motion_components({"elbow_flexion": 90, "shoulder_external_rotation": 45})
    joints = forward_kinematics(body_pose_from_components(components))
    for wrist, elbow in (("left_wrist", "left_elbow"), ("right_wrist", "right_elbow")):
        assert joints[JOINT[wrist], Y] - joints[JOINT[elbow], Y] > 0.1


def test_sampler_is_deterministic_for_a_seed():
    a = sample_body_pose(64, torch.Generator().manual_seed(3))
    b = sample_body_pose(64, torch.Generator().manual_seed(3))
    c = sample_body_pose(64, torch.Generator().manual_seed(4))
    assert a.shape == (64, 69) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("activity", sorted(ACTIVITIES))
def test_samples_of_every_activity_are_within_limits(activity):
    poses = sample_body_pose(200, torch.Generator().manual_seed(0), activities=[activity])
    assert within_limits(poses).all()


def test_components_round_trip():
    poses = sample_body_pose(500, torch.Generator().manual_seed(1), dtype=torch.float64)
    back = body_pose_from_components(components_from_body_pose(poses))
    assert torch.allclose(back, poses, atol=1e-10)


def test_twisting_two_joints_breaks_the_limits():
    poses = sample_body_pose(1000, torch.Generator().manual_seed(2))
    twisted = twist_beyond_limits(poses, num_joints=2, generator=torch.Generator().manual_seed(5))
    assert twisted.shape == poses.shape
    assert not within_limits(twisted).any()
    changed = (components_from_body_pose(twisted.double())
               - components_from_body_pose(poses.double())).abs().amax(-1) > 1e-4
    assert (changed.sum(-1) == 2).all()


def test_unknown_activity_is_rejected():
    with pytest.raises(ValueError, match="unknown activities"):
        sample_body_pose(4, activities=["juggling"])
