"""``python -m fitkit.demo``: fitkit's main job, end to end, on the embedded default.

Makes a small synthetic dataset (8 images of 256 x 256 with detector-like OpenPose keypoints and
initial estimates perturbed like a regressor's, ``fitkit.synth``), refines it with SMPLify
(keypoints + the open GMM prior, preset ``refine``, ``fitkit.refine``), prints the errors before
and after (mm) and writes overlay pictures (image | initial mesh | refined mesh) into ``--out``
(default ``./fitkit_demo``). :func:`open_body_picture` draws the open body itself.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import fitkit
from fitkit.body import BodyModel
from fitkit.geometry import Camera, axis_angle_to_matrix
from fitkit.io.runs import atomic_write, positive_int, run_command
from fitkit.refine import metrics_table, refine_dataset
from fitkit.render.shade import grid, shade, to_uint8
from fitkit.synth import SynthConfig, generate_dataset
from fitkit.synth.poses import body_pose_from_components, motion_components
from fitkit.viz import stack_rows

PANEL = (320, 320)
"""(H, W) of one picture panel."""

FACING_CAMERA = torch.tensor([math.pi, 0.0, 0.0])
"""global_orient of a person standing upright, facing the camera (fitkit's conventions)."""

DEMO_POSES: dict[str, dict[str, float]] = {
    "elbows and knees": {"elbow_flexion": 90.0, "knee_flexion": 90.0, "hip_flexion": 60.0},
    "arms down": {"shoulder_abduction": -75.0, "elbow_flexion": 30.0, "hip_abduction": 10.0},
    "bending forward": {"shoulder_flexion": 80.0, "elbow_flexion": 20.0, "spine_flexion": 20.0,
                 "knee_flexion": 30.0, "hip_flexion": 25.0},
}
"""Named poses for the picture, as anatomical motions in degrees (``fitkit.synth.poses``)."""


def frame_bodies(
    vertices: Tensor,
    camera: Camera,
    yaw_deg: float = 0.0,
    margin: float = 1.08,
    same_distance: bool = False,
) -> Tensor:
    """Place body-frame meshes upright in front of each camera so that each fills its picture.

    Args:
        vertices: ``(B, V, 3)`` vertices in the body frame (y up, facing +z).
        camera: B cameras.
        yaw_deg: turn of the body about its vertical axis (0 = facing the camera).
        margin: room around each body, as a factor of its extent.
        same_distance: one distance for all, so that sizes compare across pictures.
    Returns:
        ``(B, V, 3)`` camera-frame vertices.
    """
    yaw = torch.tensor([0.0, math.radians(yaw_deg), 0.0])
    rotation = axis_angle_to_matrix(FACING_CAMERA.to(vertices)) @ axis_angle_to_matrix(
        yaw.to(vertices)
    )
    points = vertices @ rotation.T
    low, high = points.amin(dim=1), points.amax(dim=1)
    centre = (low + high) / 2
    half = (high - low)[:, :2] / 2 * margin
    size = camera.image_size / 2
    depth = (half * camera.focal_length / size).amax(dim=-1) + half.amax(dim=-1)
    if same_distance:
        depth = depth.amax().expand_as(depth)
    offset = torch.stack([-centre[:, 0], -centre[:, 1], depth - centre[:, 2]], dim=-1)
    return points + offset[:, None]


def open_body_picture(body: BodyModel) -> Tensor:
    """The open body at rest, in the demo poses and at ±2σ of its first two shape components.

    Returns:
        ``(H, W, 3)`` uint8 image, two rows of four panels.
    """
    poses = [torch.zeros(69)] + [
        body_pose_from_components(motion_components(m)).float() for m in DEMO_POSES.values()
    ]
    body_pose = torch.stack(poses + [torch.zeros(69)] * 4)
    betas = torch.zeros(len(body_pose), 10)
    for row, (component, sign) in enumerate([(0, -2), (0, 2), (1, -2), (1, 2)], start=4):
        betas[row, component] = sign
    with torch.no_grad():
        out = body(body_pose=body_pose.to(body.dtype), betas=betas.to(body.dtype))
        camera = Camera.from_image_size(PANEL[1], PANEL[0], batch_size=len(body_pose))
        vertices = frame_bodies(out.vertices.float(), camera, yaw_deg=-35.0, same_distance=True)
        images = shade(vertices, body.faces, camera)
    return to_uint8(grid(images, columns=4))


def _height(vertices: Tensor) -> float:
    """Standing height of ``(V, 3)`` body-frame vertices (extent along y)."""
    return float(vertices[:, 1].max() - vertices[:, 1].min())


def summary(body: BodyModel) -> str:
    """A few lines that say what the body is."""
    with torch.no_grad():
        rest = body().vertices[0]
        tall = body(betas=torch.tensor([[2.0] + [0.0] * 9], dtype=body.dtype)).vertices[0]
        short = body(betas=torch.tensor([[-2.0] + [0.0] * 9], dtype=body.dtype)).vertices[0]
    lines = [
        f"fitkit {fitkit.__version__} — the open body",
        f"  file            {body.source}",
        f"  mesh            {body.num_vertices} vertices, {len(body.faces)} triangles",
        "  skeleton        24 SMPL joints, 10 shape components",
        f"  height          {_height(rest):.2f} m at zero betas "
        f"({_height(short):.2f}–{_height(tall):.2f} m at beta0 = ∓2)",
        f"  keypoint sets   {', '.join(body.keypoint_sets)}",
    ]
    if body.marker_names is not None:
        lines.append(f"  markers         {len(body.marker_names)}")
    if body.vt is not None:
        lines.append(f"  UVs             {len(body.vt)} coordinates")
    if body.dp_I is not None:
        lines.append(f"  DensePose parts {len(torch.unique(body.dp_I))}")
    return "\n".join(lines)


def header(body: BodyModel) -> str:
    """One line that says which body the demo fits."""
    return (f"fitkit {fitkit.__version__} — the open body: {body.num_vertices} vertices, "
            f"{len(body.faces)} triangles, 24 SMPL joints, 10 shape components")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fitkit.demo``; returns the exit code (0; 2: bad arguments or
    an output folder another run is writing; 1: a failure of the machine such as a full disk or
    an unwritable ``--out``: :func:`fitkit.io.runs.run_command`)."""
    parser = argparse.ArgumentParser(prog="python -m fitkit.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("fitkit_demo"), help="output folder")
    parser.add_argument("--num", type=positive_int, default=8, help="images (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: demo(args.out, args.num, args.seed),
                       interrupted="run the same command again")


def demo(out: Path, num: int, seed: int) -> int:
    """Make the dataset, refine it and print what came out (see the module doc)."""
    out.mkdir(parents=True, exist_ok=True)
    body = fitkit.load_body("open")
    print(header(body))
    data, refined = out / "data", out / "refined"
    print(f"1. synthetic dataset: {num} images of 256 x 256, seed {seed} -> {data}")
    generate_dataset(data, num, seed, SynthConfig(size=256), progress=False)
    print("2. SMPLify refinement of its initial estimates: keypoints + GMM prior, preset refine")
    result = refine_dataset(data, refined, prior="gmm", data_term="keypoints", overwrite=True,
                            overlays=num, progress=False)
    print()
    print(metrics_table(result.metrics_values))
    print(f"(mean errors in mm over {result.metrics_values['num_valid']} images; refined in "
          f"{result.seconds:.1f} s)")
    print()
    example = out / "refine_example.png"
    rows = [np.asarray(Image.open(path).convert("RGB")) for path in result.overlays[:4]]
    if rows:
        picture = Image.fromarray(stack_rows(rows))
        atomic_write(example, lambda tmp: picture.save(tmp, format="PNG"))
    print(f"results   {result.results}")
    print(f"metrics   {result.metrics}")
    print("overlays  " + "\n          ".join(str(path) for path in result.overlays))
    print(f"example   {example}  (image | initial estimate | refined, first 4 images)")
    print(f"\nnext: python -m fitkit.refine --input {data} --output OUT --prior vposer "
          "--data-term densepose")
    return 0


if __name__ == "__main__":
    sys.exit(main())
