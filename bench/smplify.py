"""Time batched SMPLify (keypoints term, each open prior) and measure its peak memory.

    python bench/smplify.py [--batch-sizes 1 32 64] [--iterations 100] [--priors gmm vposer cnf]
                            [--preset refine] [--threads N]

For every device (CPU, and CUDA when available), prior and batch size: one fit of synthetic
people (open body, poses from ``fitkit.synth.poses``, 1000 x 1000 images, exact keypoints plus
2 px noise, a start perturbed by 0.2 rad and 10 cm), with ``--iterations`` per stage of the
preset (two stages). Prints the milliseconds per fit, per iteration and per sample-iteration,
and the peak memory: CUDA's peak allocation, or on the CPU the process's peak resident set so
far (it only grows, so rows come in increasing batch size).
"""

from __future__ import annotations

import argparse
import resource
import sys

import torch

import fitkit
from fitkit.fitting import SMPLify, preset
from fitkit.geometry import Camera
from fitkit.priors import load
from fitkit.synth.poses import sample_body_pose


def make_batch(body: fitkit.body.BodyModel, camera: Camera, seed: int) -> tuple[dict, dict]:
    """Ground-truth-derived keypoints ``(B, 25, 3)`` and a perturbed start, on the body's
    device."""
    batch = camera.batch_size
    g = torch.Generator().manual_seed(seed)
    like = {"device": body.device, "dtype": body.dtype}
    truth = {
        "global_orient": torch.tensor([[torch.pi, 0.0, 0.0]]).repeat(batch, 1),
        "body_pose": sample_body_pose(batch, generator=g),
        "betas": 0.5 * torch.randn(batch, 10, generator=g),
        "transl": torch.tensor([[0.0, -0.3, 3.0]]) + 0.2 * torch.randn(batch, 3, generator=g),
    }
    truth = {name: value.to(**like) for name, value in truth.items()}
    with torch.no_grad():
        pixels = camera.project(body(**truth).keypoints("openpose25"))
    pixels = pixels + 2.0 * torch.randn(pixels.shape, generator=g).to(**like)
    keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    noise = {
        "global_orient": 0.1 * torch.randn(batch, 3, generator=g),
        "body_pose": 0.2 * torch.randn(batch, 69, generator=g),
        "betas": torch.zeros(batch, 10),
        "transl": 0.1 * torch.randn(batch, 3, generator=g),
    }
    init = {name: truth[name] + noise[name].to(**like) for name in truth}
    return keypoints, init


def peak_memory_mb(device: torch.device) -> float:
    """CUDA peak allocation since the last reset, or the process's peak RSS (MB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--iterations", type=int, default=100, help="per stage")
    parser.add_argument("--priors", nargs="+", default=["gmm", "vposer", "cnf"])
    parser.add_argument("--preset", default="refine")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    config = preset(args.preset).with_stages(iterations=args.iterations)
    iterations = sum(stage.iterations for stage in config.stages)
    print(f"preset {args.preset}, {len(config.stages)} stages x {args.iterations} iterations, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    header = ("device", "prior", "B", "ms/fit", "ms/iter", "ms/(iter*B)", "peak MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for device in devices:
        body = fitkit.load_body("open", device=device)
        for prior_name in args.priors:
            fitter = SMPLify(body, load(prior_name), config)
            for batch in args.batch_sizes:
                camera = config.camera(1000, 1000, batch, device=device)
                keypoints, init = make_batch(body, camera, seed=batch)
                term = config.build_term("keypoints", keypoints=keypoints)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                result = fitter.fit(term, camera, init=init)
                ms = 1000.0 * result.timings["total"]
                row = (device.type, prior_name, str(batch), f"{ms:.0f}",
                       f"{ms / iterations:.1f}", f"{ms / iterations / batch:.2f}",
                       f"{peak_memory_mb(device):.0f}")
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
