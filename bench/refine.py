"""Images per second of ``python -m fitkit.refine`` with keypoints, whole processes, in one run.

    python bench/refine.py [--data DIR] [--num 200] [--threads 2] [--runs 1]

Makes (or reuses) a synthetic dataset folder (``--num`` images, seed 2024, 256 px, detector-like
keypoints, perturbed ``init.npz``) and refines it with keypoints + GMM (preset ``refine``) in
fresh processes, as a user would: start-up, reading, fitting, metrics and results included.
Configurations alternate within each round, so their ratios come from one run:

- ``batch 32``: the batch size refine used before it chose one per data term;
- ``default``: refine's default (512 images per batch with keypoints);
- ``lm``: ``--optimizer lm --iterations 10``;
- ``compiled``: ``--compile``, after one untimed run that fills torch's on-disk compile cache;
- with ``--before PATH``, a ``before`` row: the default command run from another checkout of
  fitkit (``PATH`` is put first on ``PYTHONPATH``; add its dependencies after a ``:``).

Prints wall seconds, images per second and the refined MPJPE of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "batch 32": ["--batch-size", "32"],
    "default": [],
    "lm": ["--optimizer", "lm", "--iterations", "10"],
    "compiled": ["--compile"],
}


def refine(data: Path, output: Path, extra: list[str], threads: int,
           pythonpath: str | None = None) -> tuple[float, float]:
    """Run one refinement in a fresh process (fitkit from ``pythonpath`` first, if given);
    return its wall seconds and refined MPJPE (mm)."""
    command = [sys.executable, "-m", "fitkit.refine", "--input", str(data), "--output",
               str(output), "--overlays", "0", "--overwrite", "--quiet", "--device", "cpu",
               *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    # run outside any checkout, so that the fitkit imported is PYTHONPATH's or the installed one
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, cwd=output.parent)
    seconds = time.perf_counter() - start
    metrics = json.loads((output / "metrics.json").read_text())
    return seconds, metrics["refined"]["mpjpe"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder (made when missing)")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1, help="rounds (medians are printed)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--before", metavar="PATH",
                        help="also time the default command of another fitkit checkout")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="fitkit_bench_refine_"))
    data = args.data or scratch / "data"
    if not (data / "meta.json").exists():
        subprocess.run([sys.executable, "-m", "fitkit.synth", "--out", str(data), "--num",
                        str(args.num), "--seed", "2024", "--size", "256", "--quiet"], check=True)
    count = json.loads((data / "meta.json").read_text())["num"]
    if "compiled" in args.configs:  # fill the compile cache (not timed)
        refine(data, scratch / "warm", CONFIGS["compiled"], args.threads)
    runs = {name: (CONFIGS[name], None) for name in args.configs}
    if args.before:
        runs = {"before": ([], args.before), **runs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    mpjpe: dict[str, float] = {}
    for _ in range(args.runs):
        for name, (extra, pythonpath) in runs.items():
            wall, error = refine(data, scratch / name.replace(" ", "_"), extra, args.threads,
                                 pythonpath)
            seconds[name].append(wall)
            mpjpe[name] = error
    print(f"refine, keypoints + GMM, {count} images, {args.threads} threads, "
          f"median of {args.runs} run(s)")
    print("| configuration | wall s | images / s | refined MPJPE mm |")
    print("|---|---:|---:|---:|")
    for name in runs:
        wall = statistics.median(seconds[name])
        print(f"| {name} | {wall:.1f} | {count / wall:.1f} | {mpjpe[name]:.1f} |")


if __name__ == "__main__":
    main()
