"""Multi-view ReFit and Shape ReFit tables (seed 001 Tables 5 and 4 patterns).

    python docs/make_refit_group_results.py --multiview DIR [--single DIR] [--net auto] \\
        [--subjects-per-batch 25] [--out FILE.md]

``--multiview DIR``: a multi-view folder (``python -m fitkit.synth --views V``: ``gt.npz`` in the
world frame, ``cameras.npz``, ``views/K/`` with per-view ``init.npz``). Table 5 pattern, every
body against the world ground truth (24 SMPL joints, MPJPE pelvis-aligned; vertices aligned by
the pelvis for PVE, by Procrustes for PA-PVE; :func:`fitkit.eval.metrics.body_metrics`):

- *the views' init*: each view's initial estimate (``views/K/init.npz``) taken to the world frame;
  *pooled*: the views' inits pooled into one body (multi-view ReFit with T = 0), what averaging
  alone gives;
- *ReFit per view*: ReFit (T = 5) on each view alone, each view's result in the world frame,
  errors averaged over all views;
- *ReFit + average of final predictions*: the same, the views' final estimates pooled into one
  body (``ReFitSolver(multiview="average_final")``);
- *Multi-view ReFit* (T = 5 and T = 10): the views' estimates pooled at every iteration
  (``ReFitSolver(multiview="pool")``, seed 001 Fig. 4).

``--single DIR`` (default: view 0 of the multi-view folder): a single-view folder with
``gt.npz`` and ``init.npz``. Table 4 pattern, camera frame, T = 5: ReFit; ReFit with the true
shape substituted after the fit (``shape="substitute"``); Shape ReFit (the true shape in the loop,
``shape="feedback"``); each sample its own group with known ``betas``. Also the 2D alignment with
the image: the mean pixel distance between the projections of the fitted and the true joints
(24) and vertices.

Prints the Markdown tables with the command and writes them to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fitkit.body import BodyModel, load_body
from fitkit.eval.metrics import body_metrics, keypoint_error_2d
from fitkit.fitting import FitBatch, FitResult, SampleGroup
from fitkit.fitting.groups import rest_root
from fitkit.fitting.refit_solver import ReFitSolver
from fitkit.geometry import Camera, camera_to_world_params
from fitkit.io.dataset import Dataset, DatasetError, open_dataset
from fitkit.io.inputs import read_images
from fitkit.io.params import PARAM_SIZES
from fitkit.io.runs import atomic_write, positive_int, run_command
from fitkit.refine.folders import MultiViewFolder, open_multiview

PROG = "make_refit_group_results"
METRICS = {"mpjpe": "MPJPE", "pa_mpjpe": "PA-MPJPE", "pve": "PVE", "pa_pve": "PA-PVE"}


def tensors(arrays: dict[str, np.ndarray], keys=PARAM_SIZES) -> dict[str, torch.Tensor]:
    """The body parameters of ``arrays`` as float32 tensors."""
    return {key: torch.as_tensor(np.asarray(arrays[key]), dtype=torch.float32) for key in keys}


def errors(body: BodyModel, params: dict[str, torch.Tensor],
           truth: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample MPJPE, PA-MPJPE, PVE, PA-PVE (mm) and the posed bodies' joints and vertices
    (``pred_joints``, ``true_joints``, ``pred_vertices``, ``true_vertices``)."""
    with torch.no_grad():
        pred = body(**{key: params[key] for key in PARAM_SIZES})
        true = body(**truth)
    scores = body_metrics(pred.joints, true.joints, pred.vertices, true.vertices)
    return {**{key: scores[key] for key in METRICS}, "pred_joints": pred.joints,
            "true_joints": true.joints, "pred_vertices": pred.vertices,
            "true_vertices": true.vertices}


def row(label: str, scores: dict[str, list[torch.Tensor]], extra: list[str]) -> str:
    """One Markdown table row: the label, the mean of each metric, extra cells."""
    cells = [f"{float(torch.cat(scores[key]).mean()):.1f}" for key in METRICS]
    return "| " + " | ".join([label, *cells, *extra]) + " |"


# --------------------------------------------------------------------------- multi-view


def view_batch(folder: MultiViewFolder, subjects: range) -> tuple[list, Camera, dict]:
    """The views of ``subjects`` as one batch, subject-major (subject s, view k at row
    ``s V + k``): images, calibrated cameras, per-view camera-frame initial estimates."""
    views = folder.num_views
    paths = [folder.views[k].image_path(folder.names[s]) for s in subjects for k in range(views)]
    cameras = {key: torch.as_tensor(value[subjects.start:subjects.stop]).flatten(0, 1)
               for key, value in folder.cameras.items()}
    camera = Camera(cameras["focal_length"], cameras["camera_center"], cameras["image_size"],
                    cameras["R"], cameras["t"])
    init = {key: torch.as_tensor(np.stack([folder.views[k].init[key][s] for s in subjects
                                           for k in range(views)]), dtype=torch.float32)
            for key in PARAM_SIZES}
    return read_images(paths), camera, init


def multiview_table(folder: MultiViewFolder, body: BodyModel, net: str,
                    subjects_per_batch: int) -> list[str]:
    """Seed 001 Table 5 pattern on a multi-view folder (module doc)."""
    if folder.gt is None:
        raise DatasetError(f"{folder.root / 'gt.npz'} not found: the multi-view table needs the "
                           "world-frame ground truth")
    views, count = folder.num_views, len(folder.names)
    truth = tensors(folder.gt)
    methods: dict[str, Callable[[FitBatch], FitResult] | None] = {
        "the views' init": None,
        "the views' inits pooled (multi-view ReFit, T=0)": ReFitSolver(
            body, net, iterations=0).solve,
        "ReFit per view (T=5)": ReFitSolver(body, net, iterations=5).solve,
        "ReFit + average of final predictions (T=5)": ReFitSolver(
            body, net, iterations=5, multiview="average_final").solve,
        "Multi-view ReFit (T=5)": ReFitSolver(body, net, iterations=5).solve,
        "Multi-view ReFit (T=10)": ReFitSolver(body, net, iterations=10).solve,
    }
    grouped = {"the views' inits pooled (multi-view ReFit, T=0)",
               "ReFit + average of final predictions (T=5)", "Multi-view ReFit (T=5)",
               "Multi-view ReFit (T=10)"}
    scores = {label: {key: [] for key in METRICS} for label in methods}
    seconds = dict.fromkeys(methods, 0.0)
    for start in range(0, count, subjects_per_batch):
        subjects = range(start, min(start + subjects_per_batch, count))
        images, camera, init = view_batch(folder, subjects)
        groups = tuple(SampleGroup(tuple(range(s * views, (s + 1) * views)), "all")
                       for s in range(len(subjects)))
        subject_truth = {key: value[subjects.start:subjects.stop] for key, value in
                         truth.items()}
        view_truth = {key: value.repeat_interleave(views, dim=0)
                      for key, value in subject_truth.items()}
        for label, solve in methods.items():
            begin = time.perf_counter()
            if solve is None:  # the inits, each view's taken to the world frame
                params = dict(init)
                params["global_orient"], params["transl"] = camera_to_world_params(
                    init["global_orient"], init["transl"], rest_root(body, init["betas"]),
                    camera.R, camera.t)
            else:
                batch = FitBatch({}, camera, init, images=images,
                                 groups=groups if label in grouped else ())
                params = solve(batch).params
            seconds[label] += time.perf_counter() - begin
            if label in grouped:  # one row per subject: its group's first view
                first = [group.indices[0] for group in groups]
                found = errors(body, {key: params[key][first] for key in PARAM_SIZES},
                               subject_truth)
            else:
                found = errors(body, params, view_truth)
            for key in METRICS:
                scores[label][key].append(found[key])
        print(f"multi-view: {subjects.stop}/{count} subjects", file=sys.stderr, flush=True)
    lines = ["| method | " + " | ".join(METRICS.values()) + " | ms / subject |",
             "|---|" + "---:|" * (len(METRICS) + 1)]
    for label in methods:
        timing = "" if methods[label] is None else f"{1000 * seconds[label] / count:.0f}"
        lines.append(row(label, scores[label], [timing]))
    return lines


# --------------------------------------------------------------------------- known shape


def shape_table(dataset: Dataset, body: BodyModel, net: str, batch_size: int) -> list[str]:
    """Seed 001 Table 4 pattern on a single-view folder (module doc)."""
    root = dataset.root
    if dataset.gt is None:
        raise DatasetError(f"{root / 'gt.npz'} not found: the shape table needs the ground "
                           "truth (its betas are the known shapes)")
    if not dataset.init:
        raise DatasetError(f"{root / 'init.npz'} not found: the shape table starts from it")
    names = dataset.names
    truth = tensors(dataset.gt)
    init = tensors(dataset.init)
    intrinsics = tensors(dataset.init, ("focal_length", "camera_center"))
    methods = {  # label: (solver, whether it is told the known shapes)
        "the init": (None, False),
        "ReFit (T=5)": (ReFitSolver(body, net, iterations=5), False),
        "ReFit + true shape substituted (T=5)": (
            ReFitSolver(body, net, iterations=5, shape="substitute"), True),
        "Shape ReFit (T=5)": (ReFitSolver(body, net, iterations=5, shape="feedback"), True),
    }
    scores = {label: {key: [] for key in (*METRICS, "joints2d", "vertices2d")}
              for label in methods}
    for start in range(0, len(names), batch_size):
        rows = slice(start, min(start + batch_size, len(names)))
        images = read_images([dataset.image_path(name) for name in names[rows]])
        sizes = torch.tensor([[image.shape[1], image.shape[0]] for image in images],
                             dtype=torch.float32)
        camera = Camera(intrinsics["focal_length"][rows], intrinsics["camera_center"][rows],
                        sizes)
        start_params = {key: value[rows] for key, value in init.items()}
        batch_truth = {key: value[rows] for key, value in truth.items()}
        known = tuple(SampleGroup((i,), betas=batch_truth["betas"][i])
                      for i in range(len(images)))
        for label, (solver, told) in methods.items():
            if solver is None:
                params = start_params
            else:
                params = solver.solve(FitBatch({}, camera, start_params, images=images,
                                               groups=known if told else ())).params
            found = errors(body, params, batch_truth)
            for key in METRICS:
                scores[label][key].append(found[key])
            for kind in ("joints", "vertices"):
                scores[label][f"{kind}2d"].append(keypoint_error_2d(
                    camera.project(found[f"pred_{kind}"]), camera.project(found[f"true_{kind}"])))
        print(f"shape: {rows.stop}/{len(names)} images", file=sys.stderr, flush=True)
    lines = ["| method | " + " | ".join(METRICS.values()) + " | 2D joints px | 2D vertices px |",
             "|---|" + "---:|" * (len(METRICS) + 2)]
    for label in methods:
        extra = [f"{float(torch.cat(scores[label][key]).mean()):.2f}"
                 for key in ("joints2d", "vertices2d")]
        lines.append(row(label, scores[label], extra))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--multiview", type=Path, required=True,
                        help="multi-view folder (python -m fitkit.synth --views V)")
    parser.add_argument("--single", type=Path, default=None,
                        help="single-view folder with gt.npz for the shape table (default: "
                             "MULTIVIEW/views/0)")
    parser.add_argument("--net", default="auto", help="ReFit checkpoint (default: the shipped)")
    parser.add_argument("--subjects-per-batch", type=positive_int, default=25)
    parser.add_argument("--batch-size", type=positive_int, default=100,
                        help="images per batch of the shape table")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args()

    def work() -> int:
        torch.set_grad_enabled(False)
        body = load_body("open")
        folder = open_multiview(args.multiview)
        single = args.single or args.multiview / "views" / "0"
        dataset = open_dataset(single)
        multiview = multiview_table(folder, body, args.net, args.subjects_per_batch)
        shape = shape_table(dataset, body, args.net, args.batch_size)
        command = "python docs/make_refit_group_results.py " + shlex.join(sys.argv[1:])
        count = len(dataset.names)
        text = "\n".join([
            f"`{command}`", "",
            f"**Multi-view** ({len(folder.names)} subjects x {folder.num_views} views of "
            f"`{args.multiview}`; millimetres against the world-frame ground truth):", "",
            *multiview, "",
            f"**Known shape** ({count} images of `{single}`; millimetres, camera frame; 2D: mean "
            "distance in pixels between the projections of the fitted and the true body):", "",
            *shape, ""])
        if args.out is not None:
            atomic_write(args.out, text.encode())
        print(text)
        return 0

    return run_command(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
