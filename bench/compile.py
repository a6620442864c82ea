"""``SMPLify(compile=...)`` against the eager objective, in one process.

    python bench/compile.py [--batch-size 64] [--fits 3] [--threads 1] [--preset spin]

Keypoints (exact plus 2 px noise, ``bench/smplify.py``'s batch) and the open GMM prior, the
preset's stages. Each fitter fits ``--fits`` batches of new people (new term objects, as a
dataset refinement does); the first compiled fit includes compiling (torch caches compiled
kernels on disk, so a second process compiles faster). Prints seconds per fit, the speed-up of
the later fits and the largest relative difference of the final energies.
"""

from __future__ import annotations

import argparse
import time

import torch
from smplify import make_batch

import fitkit
from fitkit.fitting import SMPLify, preset
from fitkit.geometry import Camera
from fitkit.priors import load
from fitkit.terms import KeypointsTerm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="spin")
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    body = fitkit.load_body("open")
    camera = Camera.from_image_size(512, 512, batch_size=args.batch_size)
    prior = load("gmm")
    batches = [make_batch(body, camera, seed) for seed in range(args.fits)]
    seconds, energies = {}, {}
    for mode in ("eager", "compiled"):
        fitter = SMPLify(body, prior, preset(args.preset),
                         compile=args.backend if mode == "compiled" else False)
        for keypoints, _, init in batches:
            start = time.perf_counter()
            result = fitter.fit(KeypointsTerm(keypoints), camera, init=init)
            seconds.setdefault(mode, []).append(time.perf_counter() - start)
            energies.setdefault(mode, []).append(result.energy)
    eager, compiled = seconds["eager"], seconds["compiled"]
    later = sum(eager[1:]) / sum(compiled[1:]) if len(eager) > 1 else float("nan")
    difference = max(float(((c - e).abs() / e.abs()).max())
                     for e, c in zip(energies["eager"], energies["compiled"], strict=True))
    print(f"B = {args.batch_size}, preset {args.preset}, keypoints + GMM, "
          f"{torch.get_num_threads()} thread(s), backend {args.backend}")
    print("| fitter | first fit (s) | later fits (s each) | speed-up, later fits | "
          "max rel. energy difference |")
    print("|---|---:|---:|---:|---:|")
    for mode, values in seconds.items():
        rest = " / ".join(f"{value:.2f}" for value in values[1:])
        print(f"| {mode} | {values[0]:.2f} | {rest} | "
              f"{'1.00' if mode == 'eager' else f'{later:.2f}'} | "
              f"{'' if mode == 'eager' else f'{difference:.1e}'} |")


if __name__ == "__main__":
    main()
