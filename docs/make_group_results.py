"""The multi-view and video tables of ``docs/results.md``: SMPLify with sample groups.

    python docs/make_group_results.py                      # in /work/data/groups
    python docs/make_group_results.py --work DIR --subjects 100 --sequences 50

Makes two hidden synthetic sets (seeds used by no network, prior or setting of fitkit)::

    python -m fitkit.synth --out WORK/mv --num 100 --views 4 --seed 1301 --size 128
    python -m fitkit.synth --out WORK/video --num 50 --frames 16 --seed 1302 --size 128

(detector-like keypoints, DensePose IUV, per-view / per-frame initial estimates perturbed as a
regressor's), and fits them with the open GMM prior from those estimates:

- **multi-view** (``mv``), for the keypoints and the DensePose term: every view fitted alone
  (``views/K`` as a single-view dataset; errors against that view's ``gt.npz``, the mean over
  all views) vs the four views of a subject fitted as one world body
  (``SampleGroup(views, shares="all")``, cameras with extrinsics from ``cameras.npz``; errors
  against the world ``gt.npz``);
- **video** (``video``), keypoints: every frame alone vs a sequence's frames sharing ``betas``
  vs shared ``betas`` plus the temporal term (``data_term=["keypoints", "temporal"]``).

MPJPE (pelvis-aligned), PA-MPJPE, PVE (centroid-aligned), PA-PVE in mm; for video also the error
of the shape (PVE of the T-posed bodies: betas alone) and the joint jitter (mean norm of the
second difference of the joints between frames, mm per frame², next to the ground truth's).
Prints Markdown tables and writes them to ``WORK/table.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fitkit
from fitkit.eval import mpjpe, pa_mpjpe, pa_pve, pve
from fitkit.fitting import SampleGroup
from fitkit.geometry import Camera
from fitkit.io import read_params
from fitkit.terms import previous_frames

PARAMS = ("global_orient", "body_pose", "betas", "transl")
TERM_INPUTS = {"keypoints": ("keypoints", "keypoints/{name}_keypoints.json"),
               "densepose": ("iuv", "densepose/{name}_IUV.png")}
"""Data term -> (its ``fit`` keyword, its file in a dataset folder)."""


def make_dataset(folder: Path, num: int, seed: int, size: int, *extra: str) -> None:
    """One synthetic set (resumed by synth when interrupted; kept when complete)."""
    subprocess.run([sys.executable, "-m", "fitkit.synth", "--out", str(folder), "--num",
                    str(num), "--seed", str(seed), "--size", str(size), "--quiet", *extra],
                   check=True)


def errors(joints: torch.Tensor, vertices: torch.Tensor, params: dict[str, np.ndarray],
           body: fitkit.body.BodyModel) -> dict[str, torch.Tensor]:
    """Per-row errors in mm against ground-truth parameters."""
    with torch.no_grad():
        truth = body(**{key: torch.as_tensor(params[key]) for key in PARAMS})
    return {"MPJPE": mpjpe(joints, truth.joints), "PA-MPJPE": pa_mpjpe(joints, truth.joints),
            "PVE": pve(vertices, truth.vertices), "PA-PVE": pa_pve(vertices, truth.vertices)}


def rows_of(params: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    order = {name: row for row, name in enumerate(params["image_names"].tolist())}
    index = [order[name] for name in names]
    return {key: value[index] for key, value in params.items()}


def single_view(folder: Path, term: str, batch: int, body: fitkit.body.BodyModel
                ) -> tuple[dict[str, torch.Tensor], float]:
    """Every image of a single-view folder fitted alone from its init."""
    gt = read_params(folder / "gt.npz")
    names = gt["image_names"].tolist()
    keyword, pattern = TERM_INPUTS[term]
    found: dict[str, list[torch.Tensor]] = {}
    seconds = 0.0
    for first in range(0, len(names), batch):
        part = names[first:first + batch]
        images = [folder / "images" / f"{name}.png" for name in part]
        inputs = {keyword: [folder / pattern.format(name=name) for name in part]}
        begin = time.perf_counter()
        result = fitkit.fit(images, init=folder / "init.npz", data_term=term, prior="gmm",
                            device="cpu", **inputs)
        seconds += time.perf_counter() - begin
        for key, value in errors(result.joints, result.vertices, rows_of(gt, part),
                                 body).items():
            found.setdefault(key, []).append(value)
    return {key: torch.cat(value) for key, value in found.items()}, seconds


def multi_view(folder: Path, term: str, batch: int, body: fitkit.body.BodyModel
               ) -> tuple[dict[str, torch.Tensor], float]:
    """The views of each subject fitted as one world body."""
    gt = read_params(folder / "gt.npz")
    cameras = np.load(folder / "cameras.npz")
    names = gt["image_names"].tolist()
    views = cameras["R"].shape[1]
    inits = [read_params(folder / "views" / str(k) / "init.npz") for k in range(views)]
    keyword, pattern = TERM_INPUTS[term]
    found: dict[str, list[torch.Tensor]] = {}
    seconds = 0.0
    per_batch = max(1, batch // views)
    for first in range(0, len(names), per_batch):
        part = names[first:first + per_batch]
        subject = np.array([cameras["image_names"].tolist().index(n) for n in part])

        def pick(key: str, subject: np.ndarray = subject) -> torch.Tensor:
            """The views' values of ``key``, subject-major rows (views inner)."""
            value = cameras[key][subject]
            return torch.as_tensor(value.reshape(-1, *value.shape[2:]), dtype=torch.float32)

        camera = Camera(pick("focal_length"), pick("camera_center"), pick("image_size"),
                        pick("R"), pick("t"))
        view_rows = [rows_of(inits[k], part) for k in range(views)]
        init = {key: np.stack([view_rows[k][key] for k in range(views)], axis=1).reshape(
            len(part) * views, -1) for key in PARAMS}
        inputs = {keyword: [folder / "views" / str(k) / pattern.format(name=name)
                            for name in part for k in range(views)]}
        groups = [SampleGroup(tuple(range(s * views, (s + 1) * views)), shares="all")
                  for s in range(len(part))]
        begin = time.perf_counter()
        result = fitkit.fit(None, init=init, data_term=term, prior="gmm", camera=camera,
                            groups=groups, device="cpu", **inputs)
        seconds += time.perf_counter() - begin
        first_views = torch.arange(0, len(part) * views, views)
        for key, value in errors(result.joints[first_views], result.vertices[first_views],
                                 rows_of(gt, part), body).items():
            found.setdefault(key, []).append(value)
    return {key: torch.cat(value) for key, value in found.items()}, seconds


VIDEO_ROWS = {"every frame alone": (False, False),
              "shared betas": (True, False),
              "shared betas + temporal term": (True, True)}


def video(folder: Path, mode: tuple[bool, bool], batch: int, body: fitkit.body.BodyModel
          ) -> tuple[dict[str, torch.Tensor], float]:
    """A video folder's frames fitted from their inits, whole sequences per batch."""
    shared, smooth = mode
    gt = read_params(folder / "gt.npz")
    sequences = np.load(folder / "sequences.npz")
    names = sequences["image_names"].tolist()
    sequence, frame = sequences["sequence"], sequences["frame"]
    ids = list(dict.fromkeys(sequence.tolist()))
    per_sequence = len(names) // len(ids)
    found: dict[str, list[torch.Tensor]] = {}
    seconds = 0.0
    step = max(1, batch // per_sequence)
    for first in range(0, len(ids), step):
        chosen = np.isin(sequence, ids[first:first + step])
        part = [name for name, keep in zip(names, chosen, strict=True) if keep]
        images = [folder / "images" / f"{name}.png" for name in part]
        keypoints = [folder / "keypoints" / f"{name}_keypoints.json" for name in part]
        extra: dict = {}
        if shared:
            extra["groups"] = [np.flatnonzero(sequence[chosen] == s).tolist()
                               for s in ids[first:first + step]]
        if smooth:
            extra |= {"data_term": ["keypoints", "temporal"],
                      "temporal": previous_frames(sequence[chosen], frame[chosen])}
        begin = time.perf_counter()
        result = fitkit.fit(images, init=folder / "init.npz", keypoints=keypoints, prior="gmm",
                            device="cpu", **extra)
        seconds += time.perf_counter() - begin
        truth = rows_of(gt, part)
        found_part = errors(result.joints, result.vertices, truth, body)
        zero = {key: torch.zeros(len(part), size) for key, size in
                (("global_orient", 3), ("body_pose", 69), ("transl", 3))}
        with torch.no_grad():
            rest = body(betas=result.params["betas"].cpu(), **zero).vertices
            rest_gt = body(betas=torch.as_tensor(truth["betas"]), **zero).vertices
        found_part["shape PVE"] = (rest - rest_gt).norm(dim=-1).mean(dim=-1) * 1000.0
        for s in ids[first:first + step]:
            rows = np.flatnonzero(sequence[chosen] == s)
            rows = torch.as_tensor(rows[np.argsort(frame[chosen][rows])])
            with torch.no_grad():
                true_joints = body(**{key: torch.as_tensor(truth[key][rows.numpy()])
                                      for key in PARAMS}).joints
            for key, joints in (("jitter", result.joints[rows]), ("gt jitter", true_joints)):
                second = joints[2:] - 2 * joints[1:-1] + joints[:-2]
                found.setdefault(key, []).append(second.norm(dim=-1).mean()[None] * 1000.0)
        for key, value in found_part.items():
            found.setdefault(key, []).append(value)
    return {key: torch.cat(value) for key, value in found.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/work/data/groups"))
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--sequences", type=int, default=50)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--parts", nargs="+", default=["mv", "video"])
    args = parser.parse_args()
    body = fitkit.load_body("open")
    lines: list[str] = []
    if "mv" in args.parts:
        folder = args.work / "mv"
        make_dataset(folder, args.subjects, 1301, args.size, "--views", "4")
        lines += [f"Multi-view ({args.subjects} subjects x 4 views, seed 1301, {args.size} px, "
                  "detector-like keypoints, from per-view perturbed inits):", "",
                  "| data term | fit | MPJPE | PA-MPJPE | PVE | PA-PVE | time (s) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for term in ("keypoints", "densepose"):
            alone: dict[str, list[torch.Tensor]] = {}
            seconds = 0.0
            for k in range(4):
                found, took = single_view(folder / "views" / str(k), term, args.batch_size,
                                          body)
                seconds += took
                for key, value in found.items():
                    alone.setdefault(key, []).append(value)
            rows = {"each view alone": ({k: torch.cat(v) for k, v in alone.items()}, seconds),
                    "multi-view (4 views, one body)": multi_view(folder, term, args.batch_size,
                                                                 body)}
            for label, (found, took) in rows.items():
                lines.append(f"| {term} | {label} | " + " | ".join(
                    f"{float(found[key].mean()):.1f}"
                    for key in ("MPJPE", "PA-MPJPE", "PVE", "PA-PVE")) + f" | {took:.0f} |")
                print(lines[-1], flush=True)
        lines.append("")
    if "video" in args.parts:
        folder = args.work / "video"
        make_dataset(folder, args.sequences, 1302, args.size, "--frames", str(args.frames))
        lines += [f"Video ({args.sequences} sequences x {args.frames} frames, seed 1302, "
                  f"{args.size} px, detector-like keypoints, from per-frame perturbed inits):",
                  "", "| fit | MPJPE | PA-MPJPE | PVE | shape PVE | jitter (gt) | time (s) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, mode in VIDEO_ROWS.items():
            found, took = video(folder, mode, args.batch_size, body)
            lines.append(f"| {label} | " + " | ".join(
                f"{float(found[key].mean()):.1f}" for key in ("MPJPE", "PA-MPJPE", "PVE",
                                                              "shape PVE"))
                + f" | {float(found['jitter'].mean()):.1f} "
                  f"({float(found['gt jitter'].mean()):.1f}) | {took:.0f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
