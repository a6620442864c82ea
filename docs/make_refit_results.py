"""The ReFit tables of ``docs/refit.md`` (seed 001, Table 3 pattern, on held-out synthetic data).

    python docs/make_refit_results.py --models /work/runs/refit_drop25/refit.pt \\
        /work/runs/refit_drop0/refit.pt --labels "dropout 0.25" "no dropout"

Uses (or makes) a held-out synthetic set the networks never saw (world seed 7; training used seed
1 and validation seed 0), at the training images' size, with detector-like keypoints::

    python -m fitkit.synth --out WORK/detector --num 200 --seed 7 --size 96 \\
        --set texture_size=64 --keypoint-noise detector

1. **Iterations.** For each model, ``fitkit.fit(images, data_term="refit", refit_iterations=T)``
   from the network's own guess (no body init; crop boxes around the detector keypoints) and from
   the set's ``init.npz`` (regressor-like perturbed bodies), T = 0, 2, 5, 10: MPJPE, PA-MPJPE (24
   SMPL joints, pelvis-aligned) and PVE in millimetres (:func:`fitkit.eval.metrics.body_metrics`).
2. **Paired.** Per model and start, MPJPE at T = 5 minus T = 0 and minus T = 2, image by image:
   the mean ± its standard error and the share of images where T = 5 is better.
3. **Chained with SMPLify.** From the set's ``init.npz`` (regressor-like perturbed bodies): SMPLify
   with detector keypoints alone (preset ``refine``, GMM); ReFit from that init (first model,
   T = 5); and ReFit's result as the init of the same SMPLify fit.

Prints Markdown tables with the commands (also ``WORK/refit.md``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

import fitkit
from fitkit.body import load_body
from fitkit.eval.metrics import body_metrics
from fitkit.io.dataset import open_dataset
from fitkit.io.inputs import read_images
from fitkit.io.params import PARAM_SIZES

HEADERS = {"mpjpe": "MPJPE", "pa_mpjpe": "PA-MPJPE", "pve": "PVE", "shape_pve": "shape PVE"}
"""Columns; *shape PVE*: the mean vertex error of the shape alone (both bodies in the rest pose,
at the origin), mm."""
ITERATIONS = (0, 2, 5, 10)


def make_dataset(work: Path, num: int, seed: int, size: int) -> Path:
    """The held-out set (skipped when complete, resumed when interrupted)."""
    data = work / "detector"
    command = [sys.executable, "-m", "fitkit.synth", "--out", str(data), "--num", str(num),
               "--seed", str(seed), "--size", str(size), "--set", "texture_size=64",
               "--keypoint-noise", "detector", "--quiet"]
    if not (data / "gt.npz").is_file():
        subprocess.run(command, check=True)
    return data


def scores(params: dict, gt: dict[str, torch.Tensor], body) -> dict[str, torch.Tensor]:
    """Mean MPJPE, PA-MPJPE, PVE (mm) of parameters against the true ones."""
    with torch.no_grad():
        truth = body(**gt)
        pred = body(**{key: torch.as_tensor(params[key]).float() for key in PARAM_SIZES})
        rest_truth = body(betas=gt["betas"]).vertices
        rest_pred = body(betas=torch.as_tensor(params["betas"]).float()).vertices
    metrics = body_metrics(pred.joints, truth.joints, pred.vertices, truth.vertices)
    metrics["shape_pve"] = 1000 * (rest_pred - rest_truth).norm(dim=-1).mean(dim=-1)
    return {key: metrics[key] for key in HEADERS}  # (B,) per image


def paired(better: torch.Tensor, worse: torch.Tensor) -> str:
    """``better - worse`` per image: mean ± standard error (mm) and the share of images where
    it is negative."""
    difference = better - worse
    error = float(difference.std()) / len(difference) ** 0.5
    return (f"{float(difference.mean()):+.1f} ± {error:.1f} mm, lower on "
            f"{100 * float((difference < 0).float().mean()):.0f} % of images")


def in_batches(fit, count: int, batch_size: int) -> fitkit.FitResult:
    """``fit(rows)`` over ``range(count)`` in batches, results concatenated."""
    parts = [fit(slice(i, i + batch_size)) for i in range(0, count, batch_size)]
    joints = torch.cat([p.joints for p in parts])
    vertices = torch.cat([p.vertices for p in parts])
    params = {key: torch.cat([p.params[key] for p in parts]) for key in parts[0].params}
    return fitkit.FitResult(params, vertices, joints, torch.cat([p.energy for p in parts]), {},
                            [], {}, {"total": sum(p.timings["total"] for p in parts)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="ReFit checkpoints")
    parser.add_argument("--labels", nargs="+", help="one label per model")
    parser.add_argument("--work", type=Path, default=Path("/work/runs/refit_eval"))
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--starts", nargs="+", choices=("own guess", "init.npz"),
                        default=["own guess", "init.npz"], help="where the loops start")
    parser.add_argument("--no-chain", action="store_true",
                        help="skip the SMPLify and ReFit -> SMPLify table")
    parser.add_argument("--smplify-iterations", type=int, default=None,
                        help="override the refine preset's iterations (default: the preset's)")
    args = parser.parse_args()
    labels = args.labels or [Path(m).parent.name for m in args.models]
    data = make_dataset(args.work, args.num, args.seed, args.size)
    dataset = open_dataset(data)
    names = dataset.names
    images = read_images([dataset.image_path(name) for name in names])
    keypoints = [data / "keypoints" / f"{name}_keypoints.json" for name in names]
    init = dataset.rows(names)
    camera = {key: init[key] for key in ("focal_length", "camera_center")}
    gt = {key: torch.as_tensor(value).float()
          for key, value in dataset.rows(names, "gt").items() if key in PARAM_SIZES}
    body = load_body("open")
    common = {"body": body, "device": "cpu"}
    overrides = ({"iterations": args.smplify_iterations}
                 if args.smplify_iterations is not None else {})

    def rows(value, part: slice):
        return {key: v[part] for key, v in value.items()}

    lines = ["| model | start | T | " + " | ".join(HEADERS.values()) + " | ms / image |",
             "|---|---|---:|" + "---:|" * (len(HEADERS) + 1)]
    starts = {label: values for label, values in (("own guess", camera), ("init.npz", init))
              if label in args.starts}
    comparisons = []
    for model, label in zip(args.models, labels, strict=True):
        for start_label, start_values in starts.items():
            per_image = {}
            for iterations in ITERATIONS:
                result = in_batches(
                    lambda part, model=model, iterations=iterations, values=start_values:
                    fitkit.fit(images[part], init=rows(values, part), data_term="refit",
                               refit_net=model, refit_iterations=iterations,
                               keypoints=keypoints[part], **common),
                    len(names), args.batch_size)
                score = per_image[iterations] = scores(result.params, gt, body)
                ms = 1000 * result.timings["total"] / len(names)
                lines.append(f"| {label} | {start_label} | {iterations} | "
                             + " | ".join(f"{float(score[k].mean()):.1f}" for k in HEADERS)
                             + f" | {ms:.1f} |")
                print(lines[-1], flush=True)
            for other in (0, 2):
                comparisons.append(
                    f"- {label}, {start_label}: MPJPE at T=5 minus T={other}: "
                    + paired(per_image[5]["mpjpe"], per_image[other]["mpjpe"]))
                print(comparisons[-1], flush=True)

    command = "python docs/make_refit_results.py " + shlex.join(sys.argv[1:])
    header = f"`{command}` on {len(names)} images of `{data}` (world seed {args.seed}):"
    if args.no_chain:
        text = "\n".join([header, "", *lines, "", *comparisons, ""])
        (args.work / "refit.md").write_text(text)
        print(text)
        return 0
    chain = ["| method (from the set's init.npz) | " + " | ".join(HEADERS.values())
             + " | s |", "|---|" + "---:|" * (len(HEADERS) + 1)]
    start = time.perf_counter()
    smplify = in_batches(lambda part: fitkit.fit(
        images[part], init=rows(init, part), data_term="keypoints", keypoints=keypoints[part],
        prior="gmm", **common, **overrides), len(names), args.batch_size)
    timed = {"SMPLify (keypoints, GMM)": (smplify, time.perf_counter() - start)}
    start = time.perf_counter()
    refit = in_batches(lambda part: fitkit.fit(
        images[part], init=rows(init, part), data_term="refit", refit_net=args.models[0],
        refit_iterations=5, keypoints=keypoints[part], **common), len(names), args.batch_size)
    timed[f"ReFit ({labels[0]}, T=5)"] = (refit, time.perf_counter() - start)
    start = time.perf_counter()
    chained = in_batches(lambda part: fitkit.fit(
        images[part], init={key: value[part] for key, value in refit.params.items()},
        data_term="keypoints", keypoints=keypoints[part], prior="gmm", **common, **overrides),
        len(names), args.batch_size)
    timed[f"ReFit ({labels[0]}, T=5) → SMPLify (keypoints, GMM)"] = (
        chained, time.perf_counter() - start + timed[f"ReFit ({labels[0]}, T=5)"][1])
    score = scores(init, gt, body)
    chain.append("| the init itself | "
                 + " | ".join(f"{float(score[k].mean()):.1f}" for k in HEADERS) + " | |")
    for label, (result, seconds) in timed.items():
        score = scores(result.params, gt, body)
        chain.append(f"| {label} | " + " | ".join(f"{float(score[k].mean()):.1f}"
                                                  for k in HEADERS) + f" | {seconds:.0f} |")
        print(chain[-1], flush=True)

    text = "\n".join([header, "", *lines, "", *comparisons, "", *chain, ""])
    (args.work / "refit.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
