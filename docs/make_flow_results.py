"""The predicted-flow tables of ``docs/results.md`` (seed 003, Table 1 on synthetic data).

    python docs/make_flow_results.py                 # 200 images, seed 1, in /tmp/fk_results
    python docs/make_flow_results.py --num 200 --seed 1 --work /tmp/fk_results --batch-size 50

Uses (or makes) the held-out synthetic set of ``docs/make_results.py`` with detector-like
keypoints (world seed 1; the shipped networks trained on seed 0)::

    python -m fitkit.synth --out WORK/detector --num 200 --seed 1 --keypoint-noise detector

1. **Displacement accuracy.** For each shipped network and texture source, the end-point error
   of the predicted field against the exact one (the ground-truth body's displacements, Eq. 1-2)
   over the pixels the initial mesh covers in the network's crop, pooled over the set, and the
   zero-displacement baseline (the initial mesh as it is), in crop pixels.
2. **Refinement.** ``refine_dataset`` (what ``python -m fitkit.refine`` runs, preset ``refine``)
   with detector-like keypoints and with predicted flow, for GMM and VPoser, plus the ablations:
   the texture network given each subject's texture estimated from its one image, or another
   subject's texture (the next image's), and the network without texture input.

Textures: the synthetic set holds each subject's true texture (``textures/NAME.png``), the
stand-in here for seed 003's texture estimated over many frames of a video; ``WORK/wrong_textures``
gets a copy with every image given the next image's texture.

Runs are kept in ``WORK/runs/...`` and resumed. Prints Markdown tables (also ``WORK/flow.md``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fitkit.api import Fitter, make_camera, read_images
from fitkit.body.model import PARAM_SIZES
from fitkit.io import read_params
from fitkit.refine import METRICS, read_textures, refine_dataset
from fitkit.terms import exact_displacements

sys.path.insert(0, str(Path(__file__).parent))
from make_results import HEADERS  # noqa: E402  (docs/make_results.py, beside this script)

TRUE, WRONG = "textures", "wrong_textures"
"""Texture folders: the dataset's own, and the copy shifted by one image."""

ROWS = {
    "detector-like keypoints": ("GMM", "gmm", "keypoints", None, None, None),
    "detector-like keypoints ": ("VPoser", "vposer", "keypoints", None, None, None),
    "predicted flow": ("GMM", "gmm", "flow", "predicted", "open", TRUE),
    "predicted flow ": ("VPoser", "vposer", "flow", "predicted", "open", TRUE),
    "predicted flow, texture from the one image": ("GMM", "gmm", "flow", "predicted", "open",
                                                   "estimate"),
    "predicted flow, wrong texture": ("GMM", "gmm", "flow", "predicted", "open", WRONG),
    "predicted flow, no texture input": ("GMM", "gmm", "flow", "predicted", "open-notexture",
                                         None),
    "predicted flow, no texture input ": ("VPoser", "vposer", "flow", "predicted",
                                          "open-notexture", None),
    "exact flow (upper bound)": ("GMM", "gmm", "flow", "exact", None, None),
}
"""Row label -> (prior label, prior, data term, flow source, network, texture)."""

EPE_ROWS = {
    "texture input, the subject's texture": ("open", TRUE),
    "texture input, texture from the one image": ("open", "estimate"),
    "texture input, wrong texture (next image's)": ("open", WRONG),
    "no texture input": ("open-notexture", None),
}


def texture_source(data: Path, texture: str | None) -> str | None:
    """What ``refine_dataset`` takes for a row's texture."""
    if texture in (TRUE, WRONG):
        return str(data / texture)
    return texture


def make_wrong_textures(data: Path) -> None:
    """``data/wrong_textures/NAME.png``: the texture of the next image (the last gets the
    first's)."""
    names = [str(name) for name in read_params(data / "init.npz")["image_names"]]
    folder = data / WRONG
    folder.mkdir(exist_ok=True)
    for name, other in zip(names, names[1:] + names[:1], strict=True):
        (folder / f"{name}.png").write_bytes((data / TRUE / f"{other}.png").read_bytes())


def displacement_errors(data: Path, net: str, texture: str | None, batch_size: int,
                        device: str | None) -> tuple[float, float, int]:
    """Pooled EPE of the predicted and of the zero field (crop pixels), and the pixel count."""
    fitter = Fitter("flow", "gmm", device=device, flow_net=net)  # net: a shipped name
    init, gt = read_params(data / "init.npz"), read_params(data / "gt.npz")
    names = [str(name) for name in init["image_names"]]
    like = {"device": fitter.device, "dtype": fitter.body.dtype}
    error = baseline = pixels = 0.0
    for start in range(0, len(names), batch_size):
        rows = slice(start, start + batch_size)
        images = read_images([data / "images" / f"{name}.png" for name in names[rows]])
        sizes = np.array([[image.shape[1], image.shape[0]] for image in images])
        params = {key: torch.as_tensor(init[key][rows]).to(**like) for key in PARAM_SIZES}
        source = texture_source(data, texture)
        if source is not None and Path(source).is_dir():
            source = read_textures(Path(source), names[rows], [""] * len(images)).to(**like)
        camera = make_camera(sizes, fitter.config, {k: v[rows] for k, v in init.items()})
        camera = camera.to(**like)
        with torch.no_grad():
            output = fitter.body(**params)
            pixels_in = torch.as_tensor(np.stack(images)).to(**like).permute(0, 3, 1, 2) / 255
            prediction = fitter.predictor(source)(pixels_in, output, camera, source)
            truth = exact_displacements(
                fitter.body, {key: torch.as_tensor(gt[key][rows]).to(**like)
                              for key in PARAM_SIZES}, params, prediction.camera)
        mask = prediction.mask
        error += float(torch.linalg.vector_norm(prediction.displacements - truth, dim=1)[mask]
                       .sum())
        baseline += float(torch.linalg.vector_norm(truth, dim=1)[mask].sum())
        pixels += float(mask.sum())
    return error / pixels, baseline / pixels, int(pixels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fk_results"))
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--skip-epe", action="store_true", help="only the refinement table")
    parser.add_argument("--skip-refine", action="store_true", help="only the EPE table")
    parser.add_argument("--only", nargs="+", metavar="TEXT",
                        help="only the refinement rows with these labels")
    args = parser.parse_args()

    data = args.work / "detector"
    command = [sys.executable, "-m", "fitkit.synth", "--out", str(data), "--num", str(args.num),
               "--seed", str(args.seed), "--size", str(args.size), "--keypoint-noise",
               "detector", "--quiet"]
    print("$", " ".join(["python", *command[1:]]), flush=True)
    subprocess.run(command, check=True)
    make_wrong_textures(data)

    out = []
    if not args.skip_epe:
        out += ["| network input | EPE predicted (px) | EPE zero displacement (px) | pixels |",
                "|---|---:|---:|---:|"]
        for label, (net, texture) in EPE_ROWS.items():
            start = time.perf_counter()
            epe, zero, count = displacement_errors(data, net, texture, args.batch_size,
                                                   args.device)
            print(f"{label:45} EPE {epe:.3f} px  zero {zero:.3f} px  ({count} pixels, "
                  f"{time.perf_counter() - start:.0f} s)", flush=True)
            out.append(f"| {label} | **{epe:.2f}** | {zero:.2f} | {count:,} |")
        out.append("")

    rows = []
    for label, (prior_label, prior, term, flow, net, texture) in ROWS.items():
        if args.skip_refine or args.only and label.strip() not in args.only:
            continue
        start = time.perf_counter()
        run = "-".join(str(part) for part in (term, flow, net, texture, prior))
        options = {"flow": flow} if flow else {}
        if net:
            options |= {"flow_net": net, "texture": texture_source(data, texture)}
        summary = refine_dataset(data, args.work / "runs" / run, prior=prior, data_term=term,
                                 device=args.device, batch_size=args.batch_size, resume=True,
                                 overlays=0, progress=False, **options)
        seconds = time.perf_counter() - start
        metrics = summary.metrics_values
        rows.append((label.strip(), prior_label, metrics, seconds))
        print(f"{label.strip():34} {prior_label:7} " + "  ".join(
            f"{HEADERS[m]} {metrics['refined'][m]:.1f}" for m in METRICS)
            + f"  ({metrics['num_valid']}/{metrics['num_images']} valid, {seconds:.0f} s)",
            flush=True)

    init = rows[0][2]["init"] if rows else {m: float("nan") for m in METRICS}
    out += ["| data term | prior | " + " | ".join(HEADERS[m] for m in METRICS)
            + " | valid | time (s) |", "|---|---|" + "---:|" * (len(METRICS) + 2),
            "| initial estimates | | " + " | ".join(f"{init[m]:.1f}" for m in METRICS)
            + " | | |"]
    for label, prior_label, metrics, seconds in rows:
        cells = [f"{metrics['refined'][m]:.1f}" for m in METRICS]
        out.append(f"| {label} | {prior_label} | " + " | ".join(cells)
                   + f" | {metrics['num_valid']}/{metrics['num_images']} | {seconds:.0f} |")
    table = "\n".join(out)
    (args.work / "flow.md").write_text(table + "\n")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
