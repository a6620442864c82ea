"""Renderer benchmark: the open body at 256 x 256, each backend and device available.

Times (a) ``rasterize`` alone and (b) the full path the flow data term runs: rasterize, every
render map (texture RGB, depth, normals, unique vertex colours, mask), per-vertex visibility and
pixel -> vertex of a per-pixel displacement field, without autograd. Prints milliseconds per
batch and per image, the median of several runs after warm-up.

    python bench/render.py [--size 256] [--runs 10] [--warmup 3] [--threads N]

The body stands upright about 3 m in front of the camera, facing it, arms lowered. Until the open
body file exists, a UV sphere of about 7k vertices shaped like a body stands in (the table says
which mesh it measured).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.geometry import Camera
from fitkit.render import (
    pixel_to_vertex,
    rasterize,
    render_maps,
    vertex_visibility,
)

DISTANCE = 3.0


def posed_open_body() -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, str]:
    """The open body posed simply, in the camera frame; or a stand-in mesh.

    Returns:
        ``(V, 3)`` camera-frame vertices, ``(F, 3)`` faces, ``(V, 3)`` rest vertices, ``vt``,
        ``ft`` (or None) and a label naming the mesh.
    """
    from fitkit.body import OPEN_BODY_PATH

    if not OPEN_BODY_PATH.exists():
        return _stand_in()
    try:
        from fitkit import load_body
    except ImportError:
        data = np.load(OPEN_BODY_PATH)
        rest = torch.as_tensor(data["v_template"], dtype=torch.float32)
        faces = torch.as_tensor(data["f"].astype(np.int64))
        # SMPL's frame (y up, facing +z) turned by pi about x: upright, facing the camera.
        vertices = rest * torch.tensor([1.0, -1.0, -1.0])
        return _place(vertices), faces, rest, None, None, "open body v_template (npz)"
    return pose_body(load_body("open")) + ("open body, posed",)


def pose_body(body: BodyModel) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """A fitkit ``BodyModel`` standing upright facing the camera, arms lowered, elbows bent.

    Returns:
        ``(V, 3)`` camera-frame vertices, ``(F, 3)`` faces, ``(V, 3)`` rest (T-pose, mean shape)
        vertices, and the body's ``vt``, ``ft`` (or None).
    """
    body_pose = torch.zeros(1, 69)
    body_pose[0, (16 - 1) * 3 + 2] = -1.1  # left shoulder about z: arm down from the T-pose
    body_pose[0, (17 - 1) * 3 + 2] = 1.1  # right shoulder
    body_pose[0, (18 - 1) * 3 + 1] = -0.3  # left elbow about y: forearm forwards
    body_pose[0, (19 - 1) * 3 + 1] = 0.3  # right elbow
    # SMPL's frame (y up, facing +z) turned by pi about x: upright, facing the camera.
    output = body(global_orient=torch.tensor([[math.pi, 0.0, 0.0]]), body_pose=body_pose)
    rest = body().vertices[0].detach()
    vt, ft = body.uv if body.uv is not None else (None, None)
    return _place(output.vertices[0].detach()), body.faces, rest, vt, ft


def _stand_in() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, str]:
    import trimesh

    mesh = trimesh.creation.uv_sphere(radius=1.0, count=[46, 80])
    rest = torch.as_tensor(mesh.vertices, dtype=torch.float32) * torch.tensor([0.3, 0.85, 0.2])
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    vertices = rest * torch.tensor([1.0, -1.0, -1.0])
    return _place(vertices), faces, rest, spherical_uv(rest), faces, "UV-sphere stand-in"


def spherical_uv(rest: Tensor) -> Tensor:
    """``(V, 2)`` UVs from the direction of each rest vertex seen from the mesh centre."""
    direction = rest - rest.mean(0)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    return torch.stack(
        [
            torch.atan2(direction[:, 0], direction[:, 2]) / (2 * math.pi) + 0.5,
            direction[:, 1].clamp(-1, 1).asin() / math.pi + 0.5,
        ],
        dim=-1,
    )


def _place(vertices: Tensor) -> Tensor:
    """Centre a mesh on the optical axis, ``DISTANCE`` in front of the camera."""
    centre = (vertices.amax(0) + vertices.amin(0)) / 2
    return vertices - centre + torch.tensor([0.0, 0.0, DISTANCE])


def median_ms(step: Callable[[], object], device: torch.device, runs: int, warmup: int) -> float:
    """Median wall time of ``step`` in milliseconds, after ``warmup`` untimed calls."""
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@torch.no_grad()
def measure(
    backend: str,
    device: torch.device,
    batch: int,
    args: argparse.Namespace,
    vertices: Tensor,
    faces: Tensor,
    rest: Tensor,
    texture: Tensor,
    vt: Tensor,
    ft: Tensor,
) -> tuple[float, float, float]:
    """Milliseconds per batch of rasterize and of the full path, and the covered fraction."""
    # a slightly different placement per image, as in a real batch
    shift = torch.linspace(-0.05, 0.05, batch)[:, None] * torch.tensor([1.0, 0.5, 0.0])
    vertices = (vertices[None] + shift[:, None]).to(device)
    faces, rest, texture, vt, ft = (x.to(device) for x in (faces, rest, texture, vt, ft))
    camera = Camera.from_image_size(args.size, args.size, batch_size=batch).to(device)
    displacement = torch.randn(batch, args.size, args.size, 2, device=device)

    def raster():
        return rasterize(vertices, faces, camera, backend=backend)

    def full():
        fragments = raster()
        maps = render_maps(vertices, faces, fragments, rest, texture=texture, uv=vt, faces_uv=ft)
        visible = vertex_visibility(fragments, faces, vertices.shape[1])
        return maps, visible, pixel_to_vertex(displacement, faces, fragments, vertices.shape[1])

    coverage = raster().mask.float().mean().item()
    t_raster = median_ms(raster, device, args.runs, args.warmup)
    t_full = median_ms(full, device, args.runs, args.warmup)
    return t_raster, t_full, coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image width and height (pixels)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    vertices, faces, rest, vt, ft, label = posed_open_body()
    texture = torch.rand(3, 64, 64)
    texture = torch.nn.functional.interpolate(texture[None], size=512, mode="bilinear")[0]
    if vt is None:
        vt, ft = spherical_uv(rest), faces

    setups = [("torch", torch.device("cpu"))]
    if torch.cuda.is_available():
        setups.append(("torch", torch.device("cuda")))
        try:
            import nvdiffrast.torch  # noqa: F401

            setups.append(("nvdiffrast", torch.device("cuda")))
        except ImportError:
            print("nvdiffrast not installed: its backend is not measured")

    print(
        f"mesh: {label}, V={vertices.shape[0]}, F={faces.shape[0]}; image {args.size}x{args.size}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(f"median of {args.runs} runs after {args.warmup} warm-up runs\n")
    header = (
        f"{'backend':<11}{'device':<7}{'B':>3}  {'raster ms':>10}{'/image':>9}"
        f"  {'full ms':>9}{'/image':>9}  {'coverage':>8}"
    )
    print(header)
    print("-" * len(header))
    for backend, device in setups:
        for batch in (1, 8):
            t_raster, t_full, coverage = measure(
                backend, device, batch, args, vertices, faces, rest, texture, vt, ft
            )
            print(
                f"{backend:<11}{device.type:<7}{batch:>3}  {t_raster:>10.1f}"
                f"{t_raster / batch:>9.1f}  {t_full:>9.1f}{t_full / batch:>9.1f}  {coverage:>8.1%}"
            )


if __name__ == "__main__":
    main()
