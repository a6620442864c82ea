"""Time ReFit: milliseconds per frame of the feedback-update loop, and training steps per second.

    python bench/refit.py [--configs cpu paper] [--batch-sizes 1 64] [--iterations 5]
                          [--repeats 5] [--max-seconds 30] [--threads N] [--train-batch 16]

Prints one table: per config, device (CPU fp32; CUDA fp32 when available) and batch size, the
milliseconds per batch and per frame of inference (eval mode, no gradients, T iterations, the
open body posed at every step), and, for the training batch size, milliseconds per training
step (forward with feedback dropout, the loss of every iteration, backward, Adam) and steps per
second. Batches are random crops (the timing does not depend on content); making synthetic
training batches (rendering) is not included. Each figure is the median of up to ``--repeats``
runs after one warm-up run, fewer when a row would take longer than ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from fitkit.body import load_body
from fitkit.geometry import Camera
from fitkit.nets.refit import REFIT_CONFIGS, CropInfo, ReFit, ReFitTarget, refit_loss


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int,
              max_seconds: float) -> float:
    """Median wall time of ``fn`` in milliseconds (one warm-up run first)."""
    fn()
    times: list[float] = []
    budget = time.perf_counter() + max_seconds
    while len(times) < repeats and (not times or time.perf_counter() < budget):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def inputs(config_name: str, batch: int, device: torch.device, body) -> tuple:
    """A network, random crops and their boxes in a 256 x 256 full image."""
    config = REFIT_CONFIGS[config_name]
    if config.keypoints == "markers":
        config = dataclasses.replace(config, num_keypoints=len(body.marker_ids))
    net = ReFit(config).to(device)
    size = config.image_size
    images = torch.rand(batch, 3, size, size, device=device)
    full = torch.full((batch, 2), 256.0, device=device)
    crop = CropInfo(torch.full((batch, 2), 127.5, device=device),
                    torch.full((batch,), 200.0, device=device), Camera.default(full))
    return net, images, crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["cpu", "paper"],
                        choices=list(REFIT_CONFIGS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--train-batch", type=int, default=16,
                        help="batch size of the training-step row (0: none)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    body_cpu = load_body("open")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"T = {args.iterations}")
    print("| config | device | what | batch | ms / batch | ms / frame | steps / s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for device in devices:
        body = body_cpu.to(device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        for config_name in args.configs:
            for batch in args.batch_sizes:
                net, images, crop = inputs(config_name, batch, device, body)
                net.eval()

                def infer(net=net, images=images, crop=crop, body=body) -> None:
                    with torch.no_grad():
                        net(images, crop, body, args.iterations)

                ms = median_ms(infer, device, args.repeats, args.max_seconds)
                print(f"| {config_name} | {name} | inference | {batch} | {ms:.1f} | "
                      f"{ms / batch:.2f} | |", flush=True)
            if args.train_batch:
                batch = args.train_batch
                net, images, crop = inputs(config_name, batch, device, body)
                net.train()
                optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
                target = ReFitTarget(
                    body(vertex_ids=torch.zeros(0, dtype=torch.long, device=device)).joints
                    .expand(batch, -1, -1) + torch.tensor([0.0, 0.0, 3.0], device=device),
                    torch.eye(3, device=device).expand(batch, 24, 3, 3),
                    torch.zeros(batch, 10, device=device))

                def step(net=net, images=images, crop=crop, optimizer=optimizer,
                         target=target, body=body) -> None:
                    loss, _ = refit_loss(net(images, crop, body, args.iterations), target, crop)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()

                ms = median_ms(step, device, args.repeats, args.max_seconds)
                print(f"| {config_name} | {name} | training step | {batch} | {ms:.1f} | "
                      f"{ms / batch:.2f} | {1000.0 / ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
