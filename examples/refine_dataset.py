"""Refine a dataset folder's initial estimates from Python (what ``python -m fitkit.refine`` does).

    python examples/refine_dataset.py                       # makes data/example (16 images) first
    python examples/refine_dataset.py --input DATASET_DIR --output OUT --prior vposer

The dataset folder is the layout of DESIGN.md / ``python -m fitkit.synth``: ``init.npz``,
``images/``, ``keypoints/``, ``densepose/``, optional ``gt.npz``. Running it again with the same
output continues an interrupted run (``resume=True``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fitkit.io import read_params
from fitkit.refine import metrics_table, refine_dataset
from fitkit.synth import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, help="dataset folder (default: a synthetic one)")
    parser.add_argument("--output", type=Path, default=Path("data/example_refined"))
    parser.add_argument("--prior", default="gmm", help="gmm, vposer, cnf")
    parser.add_argument("--data-term", default="keypoints", help="keypoints, densepose, flow")
    args = parser.parse_args()
    if args.input is None:
        args.input = generate_dataset("data/example", num=16, seed=0)

    summary = refine_dataset(
        args.input, args.output, prior=args.prior, data_term=args.data_term,
        batch_size=8, resume=True, overlays=4,  # flow: predicted by the shipped network
    )
    print(metrics_table(summary.metrics_values))

    results = read_params(summary.results)  # docs/formats.md layout + energies and flags
    flagged = [name for name, bad in zip(results["image_names"], results["flag_bad_input"],
                                         strict=True) if bad]
    print(f"{len(results['image_names'])} images, mean energy "
          f"{np.nanmean(results['energy']):.1f}, bad inputs: {flagged or 'none'}")
    print(f"overlays: {', '.join(str(path) for path in summary.overlays)}")


if __name__ == "__main__":
    main()
