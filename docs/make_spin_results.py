"""The SPIN results of ``docs/spin.md`` (seed 002, Tables 1 and 3 patterns, held-out synthetic
data) and the training curves ``docs/images/spin_curves.png``.

    python docs/make_spin_results.py --train DATA/train --test DATA/test \\
        --loop RUNS/loop --static RUNS/static

``--loop`` and ``--static`` are output folders of ``python -m fitkit.train spin`` on ``--train``
(the second with ``--static``); ``--test`` is a folder the networks never saw (another seed of
``python -m fitkit.synth``). Ground truth (``gt.npz``) is read here for the reports only.

1. **Dictionary** (Table 3 pattern): PA-MPJPE and MPJPE (24 SMPL joints, pelvis-aligned, mm)
   of the fits against the training images' ground truth, for the initial dictionary (SMPLify
   from the mean pose) and the final dictionaries; the share of valid fits and of replaced
   rows.
2. **Regressor** (Table 1 pattern): the networks (``regressor.pt`` of each run) on the held-out
   images, as ``fitkit.regress`` runs them (boxes from the detector keypoints), the mean
   parameters (an untrained network) for reference, and the per-image difference of the two
   networks (mean and standard error, and the share of images where the loop's is better).
3. **Curves**: both runs' held-out PA-MPJPE and dictionary PA-MPJPE against the training step
   (their ``history.json``).

Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fitkit.body import load_body
from fitkit.eval.metrics import mpjpe, pa_mpjpe
from fitkit.nets.checkpoint import load_network
from fitkit.nets.regressor import Regressor
from fitkit.train.fits import FitsDictionary
from fitkit.train.spin import FITS, FITS_INITIAL, HISTORY, NETWORK, KeypointFolder, body_joints
from fitkit.train.spin import evaluate_regressor as evaluate

COLORS = {"in the loop": (200, 60, 40), "static fits": (40, 90, 200)}


def dictionary_row(fits: FitsDictionary, truth: torch.Tensor, body) -> str:
    """One row of the dictionary table."""
    joints = body_joints(body, fits.params)
    finite = fits.keypoint_loss[fits.keypoint_loss.isfinite()]
    return (f"{float(pa_mpjpe(joints, truth).nanmean()):.1f} | "
            f"{float(mpjpe(joints, truth).nanmean()):.1f} | "
            f"{100 * float(fits.valid.float().mean()):.1f} % | {float(finite.mean()):.1f} | "
            f"{100 * float((fits.updates > 0).float().mean()):.1f} %")


def plot(histories: dict[str, list[dict]], path: Path) -> None:
    """Two panels (held-out PA-MPJPE, dictionary PA-MPJPE against the step), drawn with PIL."""
    panels = (("val_pa_mpjpe", "regressor, held-out PA-MPJPE"),
              ("dictionary_pa_mpjpe", "dictionary vs truth, PA-MPJPE"))
    width, height, margin = 560, 340, 56
    image = Image.new("RGB", (width * len(panels), height + 30), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    for index, (key, title) in enumerate(panels):
        left = index * width
        series = {label: [(e["step"], e[key]) for e in history if e.get(key) is not None]
                  for label, history in histories.items()}
        points = [p for values in series.values() for p in values]
        if not points:
            continue
        steps = [p[0] for p in points]
        values = [p[1] for p in points]
        x0, x1 = 0, max(steps) or 1
        y0, y1 = min(values), max(values)
        pad = 0.08 * (y1 - y0 or 1.0)
        y0, y1 = y0 - pad, y1 + pad
        box = (left + margin, 30, left + width - 16, height - 30)

        def at(step: float, value: float, box=box, x=(x0, x1), y=(y0, y1)) -> tuple[float, float]:
            u = box[0] + (step - x[0]) / (x[1] - x[0]) * (box[2] - box[0])
            v = box[3] - (value - y[0]) / (y[1] - y[0]) * (box[3] - box[1])
            return u, v

        draw.rectangle(box, outline="black")
        draw.text((left + margin, 8), title, fill="black", font=font)
        for tick in np.linspace(y0 + pad, y1 - pad, 5):
            u, v = at(x0, tick)
            draw.line((u - 4, v, u, v), fill="black")
            draw.text((left + 6, v - 7), f"{tick:.0f}", fill="black", font=font)
        for tick in np.linspace(x0, x1, 5):
            u, v = at(tick, y0)
            draw.line((u, v, u, v + 4), fill="black")
            draw.text((u - 14, v + 6), f"{tick:.0f}", fill="black", font=font)
        draw.text((box[2] - 40, height - 14), "step", fill="black", font=font)
        for row, (label, values) in enumerate(series.items()):
            if len(values) > 1:
                draw.line([at(*p) for p in values], fill=COLORS[label], width=2)
            draw.text((left + width - 230 + 110 * row, 8), label, fill=COLORS[label],
                      font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--loop", type=Path, required=True)
    parser.add_argument("--static", type=Path, required=True)
    parser.add_argument("--image", type=Path,
                        default=Path(__file__).parent / "images" / "spin_curves.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    body = load_body("open")
    train = KeypointFolder(args.train)
    truth = body_joints(body, train.gt)
    initial = FitsDictionary.read(args.loop / FITS_INITIAL)
    runs = {"in the loop": args.loop, "static fits": args.static}

    print("**Dictionary of fits vs ground truth** (training images, "
          f"{len(train)}; seed 002 Table 3 pattern)\n")
    print("| dictionary | PA-MPJPE (mm) | MPJPE (mm) | valid fits | mean keypoint loss | "
          "rows replaced |\n|---|---|---|---|---|---|")
    print(f"| initial (SMPLify from the mean pose) | {dictionary_row(initial, truth, body)} |")
    for label, run in runs.items():
        final = FitsDictionary.read(run / FITS)
        print(f"| final, {label} | {dictionary_row(final, truth, body)} |")

    test = KeypointFolder(args.test)
    print(f"\n**Regressor on held-out images** ({len(test)}; seed 002 Table 1 pattern)\n")
    print("| training | MPJPE (mm) | PA-MPJPE (mm) |\n|---|---|---|")
    histories, errors = {}, {}
    torch.manual_seed(0)  # the decoders start near zero: about the mean parameters
    nets = {**{label: load_network(run / NETWORK, "regressor") for label, run in runs.items()},
            "mean parameters (untrained network)": Regressor()}
    for label, net in nets.items():
        errors[label] = evaluate(net, test, body)
        print(f"| {label} | {float(errors[label]['mpjpe'].mean()):.1f} | "
              f"{float(errors[label]['pa_mpjpe'].mean()):.1f} |")
    for label, run in runs.items():
        histories[label] = json.loads((run / HISTORY).read_text())
    print("\nPer image, in the loop minus static fits:")
    for metric in ("mpjpe", "pa_mpjpe"):
        difference = errors["in the loop"][metric] - errors["static fits"][metric]
        print(f"- {metric}: {float(difference.mean()):+.1f} ± "
              f"{float(difference.std() / len(difference) ** 0.5):.1f} mm, the loop's better "
              f"on {100 * float((difference < 0).float().mean()):.0f} % of the images")
    plot(histories, args.image)
    print(f"\nCurves: {args.image}")


if __name__ == "__main__":
    main()
