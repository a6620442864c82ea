"""The from-scratch table of ``docs/results.md``: fits of 2D keypoints with no initial estimate.

    python docs/make_scratch_results.py                  # 200 images, seed 11, in /tmp/fk_scratch
    python docs/make_scratch_results.py --num 200 --seed 11 --work /tmp/fk_scratch

Makes two synthetic datasets with the same seed (the same people; exact and detector-like
OpenPose keypoints)::

    python -m fitkit.synth --out WORK/exact --num 200 --seed 11 --keypoint-noise none
    python -m fitkit.synth --out WORK/detector --num 200 --seed 11 --keypoint-noise detector

and fits their keypoints with the open GMM prior, ignoring their ``init.npz`` (each image's
default camera, no initial parameters), three ways:

- *refine preset, one start*: what ``fitkit.fit`` did before the scratch mode: the refine
  preset from the rest pose (arms out), upright and facing the camera;
- *refine preset, four starts*: the same from the four orientations and the prior's typical
  pose (:class:`fitkit.fitting.multistart.MultiStart`);
- *default (scratch preset, four starts)*: ``fitkit.fit(images, keypoints=...)`` with no init;
- *scratch preset, LM*: the same with ``optimizer="lm", iterations=10`` (the per-sample
  Levenberg-Marquardt optimizer in place of Adam).

It prints a Markdown table (MPJPE, PA-MPJPE, PVE in mm against ``gt.npz``; the share of fits with
a plausibility flag; seconds) and writes it to ``WORK/table.md``. Seed 11 is used by no network,
prior or setting of fitkit (the scratch preset was chosen on seed 7).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

import fitkit
from fitkit.eval import mpjpe, pa_mpjpe, pve
from fitkit.fitting.multistart import turned_orientations
from fitkit.io import read_params

ROWS = {
    "refine preset, one start (before)": ("refine", "facing", {}),
    "refine preset, four starts": ("refine", None, {}),
    "default: scratch preset, four starts": (None, None, {}),
    "scratch preset, LM (10 iterations per stage)": (None, None,
                                                     {"optimizer": "lm", "iterations": 10}),
}
"""Row label -> (preset, start, overrides): ``"facing"`` gives the one start of the rest pose
facing the camera; ``None`` the four starts at the prior's typical pose."""

PARAMS = ("global_orient", "body_pose", "betas", "transl")


def make_dataset(folder: Path, num: int, seed: int, noise: str) -> None:
    """One synthetic dataset (skipped when it exists)."""
    if (folder / "gt.npz").is_file():
        return
    subprocess.run([sys.executable, "-m", "fitkit.synth", "--out", str(folder), "--num", str(num),
                    "--seed", str(seed), "--keypoint-noise", noise, "--quiet"], check=True)


def fit_rows(folder: Path, preset: str | None, start: str | None, batch_size: int,
             overrides: dict) -> tuple[list[fitkit.FitResult], list[str], float]:
    """Fit every image of ``folder`` from scratch (``overrides``: fit settings); returns the
    results of its batches, the image names and the seconds taken."""
    gt = read_params(folder / "gt.npz")
    names = gt["image_names"].tolist()
    results, seconds = [], 0.0
    settings = dict(overrides) | ({} if preset is None else {"preset": preset})
    for first in range(0, len(names), batch_size):
        part = names[first:first + batch_size]
        images = [folder / "images" / f"{name}.png" for name in part]
        keypoints = [folder / "keypoints" / f"{name}_keypoints.json" for name in part]
        init = None
        if start == "facing":
            orient = turned_orientations([0.0]).numpy().repeat(len(part), axis=0)
            init = {"global_orient": orient}
        begin = time.perf_counter()
        results.append(fitkit.fit(images, init=init, keypoints=keypoints, prior="gmm",
                                  device="cpu", **settings))
        seconds += time.perf_counter() - begin
    return results, names, seconds


def scores(results: list[fitkit.FitResult], folder: Path,
           body: fitkit.body.BodyModel) -> dict[str, float]:
    """Mean MPJPE, PA-MPJPE, PVE (mm) and the share of flagged fits."""
    gt = read_params(folder / "gt.npz")
    with torch.no_grad():
        truth = body(**{key: torch.as_tensor(gt[key]) for key in PARAMS})
    joints = torch.cat([result.joints for result in results])
    vertices = torch.cat([result.vertices for result in results])
    flagged = torch.cat([~result.ok for result in results]).float().mean()
    return {"mpjpe": float(mpjpe(joints, truth.joints).mean()),
            "pa_mpjpe": float(pa_mpjpe(joints, truth.joints).mean()),
            "pve": float(pve(vertices, truth.vertices).mean()),
            "flagged": 100.0 * float(flagged)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fk_scratch"))
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--rows", nargs="+", metavar="TEXT",
                        help="only the rows whose label contains one of these")
    args = parser.parse_args()
    body = fitkit.load_body("open")
    lines = ["| keypoints | fit | MPJPE | PA-MPJPE | PVE | flagged | time (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for noise, label in (("detector", "detector-like"), ("none", "exact")):
        folder = args.work / ("detector" if noise == "detector" else "exact")
        make_dataset(folder, args.num, args.seed, noise)
        for row, (preset, start, overrides) in ROWS.items():
            if args.rows and not any(text in row for text in args.rows):
                continue
            results, _, seconds = fit_rows(folder, preset, start, args.batch_size, overrides)
            score = scores(results, folder, body)
            lines.append(f"| {label} | {row} | {score['mpjpe']:.1f} | {score['pa_mpjpe']:.1f} | "
                         f"{score['pve']:.1f} | {score['flagged']:.0f} % | {seconds:.0f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    (args.work / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
