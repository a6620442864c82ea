"""Time each prior's energy and its gradient for a batch of poses (open defaults).

    python bench/priors.py [--batch 64] [--repeats 50] [--threads N]

Prints one table: the median milliseconds of ``energy`` alone and of ``energy`` + ``backward``, on
the CPU and, when available, on CUDA. Latent priors get a second row for what a latent fitter
runs: ``latent_energy(z)`` plus a term on ``decode(z)`` (the bending energy, standing in for the
data terms), with the gradient to ``z`` through the decoder.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fitkit.priors import LatentPosePrior, bending_energy, load, shape_energy
from fitkit.synth.poses import sample_body_pose


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds after warm-up (synchronizing on CUDA)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def timings(energy: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            device: torch.device, repeats: int) -> tuple[float, float]:
    """(energy ms, energy + backward ms) of ``energy`` at ``x``."""
    def forward() -> None:
        with torch.no_grad():
            energy(x)

    def backward() -> None:
        leaf = x.detach().requires_grad_(True)
        energy(leaf).sum().backward()

    return median_ms(forward, device, repeats), median_ms(backward, device, repeats)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    poses = sample_body_pose(args.batch, torch.Generator().manual_seed(0))
    priors = {name: load(name) for name in ("gmm", "vposer", "cnf")}

    print(f"batch {args.batch}, median of {args.repeats}, torch {torch.__version__}, "
          f"CPU threads {torch.get_num_threads()}")
    print(f"| {'prior':<16} | {'device':<6} | {'energy ms':>9} | {'+ grad ms':>9} |")
    print(f"|{'-' * 18}|{'-' * 8}|{'-' * 11}|{'-' * 11}|")
    for device in devices:
        x = poses.to(device)
        rows: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = []
        for name, prior in priors.items():
            prior.to(device)
            rows.append((name, prior.energy, x))
            if isinstance(prior, LatentPosePrior):
                with torch.no_grad():
                    z = prior.encode(x)
                rows.append((f"{name} (latent)", lambda v, p=prior: (
                    p.latent_energy(v) + bending_energy(p.decode(v))), z))
        rows.append(("bending", bending_energy, x))
        rows.append(("shape", shape_energy, torch.randn(args.batch, 10, device=device)))
        for name, energy, inputs in rows:
            forward, backward = timings(energy, inputs, device, args.repeats)
            print(f"| {name:<16} | {device.type:<6} | {forward:9.3f} | {backward:9.3f} |")


if __name__ == "__main__":
    main()
