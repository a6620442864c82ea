"""The refinement table of ``docs/results.md``: SMPLify on a synthetic set, per data term and prior.

    python docs/make_results.py                      # 200 images, seed 1, in /tmp/fk_results
    python docs/make_results.py --num 200 --seed 1 --work /tmp/fk_results --batch-size 50

Makes two synthetic datasets with the same seed (so the same images, ground truth and initial
estimates), one with exact keypoints and one with detector-like keypoints::

    python -m fitkit.synth --out WORK/exact --num 200 --seed 1 --keypoint-noise none
    python -m fitkit.synth --out WORK/detector --num 200 --seed 1 --keypoint-noise detector

then refines them with every data term (exact keypoints, detector-like keypoints, DensePose IUV,
the exact displacement field, keypoints and DensePose together) and prior (GMM, VPoser, cNF), as
``python -m fitkit.refine`` does (``--preset refine``), and prints a Markdown table (also written
to ``WORK/table.md``). Runs are kept in ``WORK/runs/TERM-PRIOR`` and resumed, so an interrupted
script continues where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from fitkit.refine import METRICS, refine_dataset

DATA_TERMS = {
    "exact keypoints": ("exact", "keypoints", None, None),
    "exact keypoints, weight 3": ("exact", "keypoints", None, 3.0),
    "detector-like keypoints": ("detector", "keypoints", None, None),
    "DensePose IUV": ("exact", "densepose", None, None),
    "exact flow": ("exact", "flow", "exact", None),
    "detector-like keypoints + DensePose IUV": ("detector", "keypoints,densepose", None, None),
    "exact keypoints + DensePose IUV": ("exact", "keypoints,densepose", None, None),
}
"""Row label -> (dataset, data term, flow source, data-term weight (None: the preset's)).

The refine preset weighs keypoints 1 (meant for detections) and the dense terms 10; exact
keypoints do best at 3 on the validation set, so that row gives them their best weight too.
Two terms (``"keypoints,densepose"``) add their energies, each at the preset's weight."""

PRIORS = {"GMM": "gmm", "VPoser": "vposer", "cNF": "cnf"}

HEADERS = {"mpjpe": "MPJPE", "pa_mpjpe": "PA-MPJPE", "pve": "PVE", "pa_pve": "PA-PVE"}


def make_datasets(work: Path, num: int, seed: int, size: int) -> None:
    """The two synthetic datasets (skipped when complete; resumed when interrupted)."""
    for name, noise in (("exact", "none"), ("detector", "detector")):
        command = [sys.executable, "-m", "fitkit.synth", "--out", str(work / name), "--num",
                   str(num), "--seed", str(seed), "--size", str(size), "--keypoint-noise", noise,
                   "--quiet"]
        print("$", " ".join(["python", *command[1:]]), flush=True)
        subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fk_results"))
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--iterations", type=int, help="iterations per stage (preset: 100)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--rows", nargs="+", metavar="LABEL",
                        help="only the rows whose label is one of these (default: all)")
    args = parser.parse_args()

    make_datasets(args.work, args.num, args.seed, args.size)
    rows = []
    for label, (dataset, term, flow, weight) in DATA_TERMS.items():
        if args.rows and label not in args.rows:
            continue
        for prior_label, prior in PRIORS.items():
            start = time.perf_counter()
            extra = {} if weight is None else {"term_weights": {term: weight}}
            run = f"{term}-{dataset}-{prior}" + ("" if weight is None else f"-w{weight:g}")
            summary = refine_dataset(
                args.work / dataset, args.work / "runs" / run,
                prior=prior, data_term=term, flow=flow, device=args.device,
                batch_size=args.batch_size, resume=True, overlays=0, progress=False,
                iterations=args.iterations, **extra,
            )
            seconds = time.perf_counter() - start
            metrics = summary.metrics_values
            rows.append((label, prior_label, metrics, seconds))
            print(f"{label:24} {prior_label:7} " + "  ".join(
                f"{HEADERS[m]} {metrics['init'][m]:.1f}->{metrics['refined'][m]:.1f}"
                for m in METRICS) + f"  ({metrics['num_valid']}/{metrics['num_images']} valid, "
                f"{seconds:.0f} s)", flush=True)

    lines = [
        "| data term | prior | " + " | ".join(f"{HEADERS[m]} init → refined" for m in METRICS)
        + " | valid | time (s) |",
        "|---|---|" + "---:|" * (len(METRICS) + 2),
    ]
    for label, prior_label, metrics, seconds in rows:
        cells = [f"{metrics['init'][m]:.1f} → **{metrics['refined'][m]:.1f}**" for m in METRICS]
        lines.append(f"| {label} | {prior_label} | " + " | ".join(cells)
                     + f" | {metrics['num_valid']}/{metrics['num_images']} | {seconds:.0f} |")
    table = "\n".join(lines)
    (args.work / "table.md").write_text(table + "\n")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
