"""``python -m fitkit.demo``: fitkit's main job on the embedded default, shown.

Prints a summary of the open body and writes a picture of it at rest, in three poses and across
its first shape components (``--out``, default ``./fitkit_demo``).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

import fitkit
from fitkit.body import BodyModel
from fitkit.geometry import Camera, axis_angle_to_matrix
from fitkit.render.shade import grid, shade, to_uint8
from fitkit.synth.poses import body_pose_from_components, motion_components

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m fitkit.demo``."""
    parser = argparse.ArgumentParser(prog="python -m fitkit.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("fitkit_demo"), help="output folder")
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"cannot create the output folder {args.out}: {error}")
    body = fitkit.load_body("open")
    print(summary(body))
    path = args.out / "open_body.png"
    Image.fromarray(open_body_picture(body).numpy()).save(path)
    print(f"  picture         {path}  (rest, three poses; beta0 ∓2, beta1 ∓2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
