"""Time the displacement network's forward pass per frame (seed 003 reports 26.4 ms on an RTX 4090).

    python bench/flownet.py [--size 256] [--configs paper small] [--batch-sizes 1 8]
                            [--repeats 10] [--max-seconds 20] [--threads N] [--train]
                            [--predictor open]

Prints one table: milliseconds per batch and per frame of ``FlowNet`` inference (eval mode, no
gradients) at ``size x size`` for each named config and batch size, on the CPU (fp32) and, when
available, on CUDA (fp32 and bfloat16 autocast). ``--train`` adds the milliseconds of one training
step (forward, loss at every stack, backward, Adam) per batch. Each figure is the median of up to
``--repeats`` runs after one warm-up run, fewer when a row would take longer than
``--max-seconds``.

``--predictor NAME`` adds a second table: the whole path of ``data_term="flow"`` before the fit
(:class:`fitkit.nets.predict.FlowPredictor` with a shipped network or checkpoint) on synthetic
``size x size`` images, per batch and per image: texture estimation from the image, crop,
render, network, pixel -> vertex; and the same with a given texture (no estimation).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from fitkit.body import load_body
from fitkit.geometry import Camera
from fitkit.nets import FLOWNET_CONFIGS, FlowNet, flow_loss
from fitkit.nets.predict import FlowPredictor
from fitkit.synth import SynthConfig, SynthWorld


def median_ms(fn: Callable[[], None], device: torch.device, repeats: int,
              max_seconds: float) -> float:
    """Median wall time of ``fn`` in ms after one warm-up run (synchronizing on CUDA)."""
    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = timed()
    times = [timed()]
    budget = max_seconds - first - times[0]
    while len(times) < repeats and budget > times[0]:
        times.append(timed())
        budget -= times[-1]
    return 1000.0 * statistics.median(times)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device``, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def time_inference(net: FlowNet, image: torch.Tensor, renders: torch.Tensor,
                   dtype: torch.dtype | None, repeats: int, max_seconds: float) -> float:
    """Median ms of one eval-mode forward pass without gradients."""
    def infer() -> None:
        with torch.no_grad(), autocast(image.device, dtype):
            net(image, renders)

    net.eval()
    return median_ms(infer, image.device, repeats, max_seconds)


def time_training(net: FlowNet, image: torch.Tensor, renders: torch.Tensor,
                  dtype: torch.dtype | None, repeats: int, max_seconds: float) -> float:
    """Median ms of one training step: forward, loss at every stack, backward, Adam."""
    size = image.shape[-1]
    target = torch.randn(image.shape[0], 2, size, size, device=image.device)
    mask = torch.rand(image.shape[0], size, size, device=image.device) < 0.2
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        with autocast(image.device, dtype):
            predictions = net(image, renders)
        loss = flow_loss(predictions.float(), target, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    net.train()
    return median_ms(step, image.device, repeats, max_seconds)


def time_predictor(name: str, device: torch.device, size: int, batch_sizes: list[int],
                   repeats: int, max_seconds: float) -> None:
    """Print the predictor table (module docstring) for one device."""
    body = load_body("open", device=device)
    predictor = FlowPredictor(name, body)
    world = SynthWorld(body.cpu(), SynthConfig(size=size))
    body.to(device)
    for batch in batch_sizes:
        sample = world.generate(0, list(range(batch)))
        images = torch.stack([image.permute(2, 0, 1) for image in sample.images]).to(device)
        images = images.float() / 255.0
        camera = Camera(sample.focal_length, sample.camera_center,
                        torch.full((batch, 2), float(size))).to(device)
        with torch.no_grad():
            output = body(**{key: value.to(device) for key, value in sample.init.items()})
        texture = torch.full((3, 256, 256), 0.5, device=device)
        runs = [functools.partial(predictor, images, output, camera, mode)
                for mode in ("estimate", texture)]
        estimate, given = (median_ms(run, device, repeats, max_seconds) for run in runs)
        print(f"| {name:<14} | {device.type:<6} | {batch:>2} | {estimate:9.1f} | "
              f"{estimate / batch:9.1f} | {given / batch:14.1f} |", flush=True)


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--configs", nargs="+", default=list(FLOWNET_CONFIGS),
                        choices=list(FLOWNET_CONFIGS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time budget per row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    parser.add_argument("--train", action="store_true", help="also time a training step")
    parser.add_argument("--predictor", metavar="NET",
                        help="also time the flow predictor with this network (e.g. open)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    settings = [] if args.no_cpu else [(torch.device("cpu"), None)]
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        settings += [(torch.device("cuda"), None), (torch.device("cuda"), torch.bfloat16)]
        print(f"CUDA device: {torch.cuda.get_device_name()}")
    print(f"{args.size} x {args.size}, torch {torch.__version__}, "
          f"CPU threads {torch.get_num_threads()}")
    header = f"| {'config':<7} | {'params':>6} | {'device':<6} | {'dtype':<5} | {'B':>2} | " \
             f"{'ms/batch':>9} | {'ms/frame':>9} |"
    rule = f"|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 7}|{'-' * 4}|{'-' * 11}|{'-' * 11}|"
    if args.train:
        header += f" {'train ms/batch':>14} |"
        rule += f"{'-' * 16}|"
    print(header)
    print(rule)
    for name in args.configs:
        config = dataclasses.replace(FLOWNET_CONFIGS[name], image_size=args.size)
        torch.manual_seed(0)
        net = FlowNet(config)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        for device, dtype in settings:
            net.to(device)
            for batch in args.batch_sizes:
                image = torch.rand(batch, 3, args.size, args.size, device=device)
                renders = torch.randn(batch, config.render_channels, args.size, args.size,
                                      device=device)
                ms = time_inference(net, image, renders, dtype, args.repeats, args.max_seconds)
                row = (f"| {name:<7} | {params:5.2f}M | {device.type:<6} | "
                       f"{'bf16' if dtype is not None else 'fp32':<5} | {batch:>2} | "
                       f"{ms:9.1f} | {ms / batch:9.1f} |")
                if args.train:
                    train_ms = time_training(net, image, renders, dtype, args.repeats,
                                             args.max_seconds)
                    row += f" {train_ms:14.1f} |"
                print(row, flush=True)
        net.cpu()
    if args.predictor:
        print(f"\nflow predictor, {args.size} x {args.size} synthetic images")
        print(f"| {'network':<14} | {'device':<6} | {'B':>2} | {'ms/batch':>9} | "
              f"{'ms/image':>9} | {'given texture':>14} |")
        print(f"|{'-' * 16}|{'-' * 8}|{'-' * 4}|{'-' * 11}|{'-' * 11}|{'-' * 16}|")
        for device, dtype in settings:
            if dtype is None:
                time_predictor(args.predictor, device, args.size, args.batch_sizes,
                               args.repeats, args.max_seconds)


if __name__ == "__main__":
    main()
