"""The command line of ``python -m fitkit.refine``: parse, route to
:func:`~fitkit.refine.run.refine_dataset`, print the summary. Failures follow fitkit's error
policy (:func:`fitkit.io.runs.run_command`): one line ``python -m fitkit.refine: error: ...``,
exit code 2 for bad input or arguments, 1 for a failure of the machine."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from fitkit.io.keypoint_formats import KEYPOINT_FORMATS
from fitkit.io.runs import non_negative_int, positive_float, positive_int, run_command
from fitkit.refine.report import metrics_table
from fitkit.refine.run import FLOW_SOURCES, RefineError, RefineSummary, refine_dataset
from fitkit.terms import term_keywords


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m fitkit.refine``."""
    parser = argparse.ArgumentParser(
        prog="python -m fitkit.refine",
        description="Refine the initial estimates (init.npz) of a dataset folder with SMPLify.",
    )
    parser.add_argument("--input", required=True, help="dataset folder (init.npz, images/, "
                        "each data term's files, optional gt.npz); a multi-view folder "
                        "(cameras.npz, views/K/) is fitted one world body per subject, a "
                        "sequences folder (sequences.npz) with a shared shape per sequence and "
                        "the temporal term")
    parser.add_argument("--view", type=non_negative_int, metavar="K",
                        help="multi-view folder: refine view K alone, as the single-view folder "
                        "views/K (rows named by subject)")
    parser.add_argument("--no-groups", dest="groups", action="store_false",
                        help="sequences folder: fit every frame on its own (no shared shape, no "
                        "temporal term)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--prior", default="gmm",
                        help="pose prior: gmm (default), vposer, cnf, or a prior file/folder")
    parser.add_argument("--data-term", default="keypoints",
                        help="data term(s), comma-separated: "
                        f"{', '.join(term_keywords())} or one registered by --import "
                        "(default keypoints); or refit, the learned optimizer (docs/refit.md)")
    parser.add_argument("--import", dest="modules", action="append", default=[],
                        metavar="MODULE", help="import MODULE first (it may register data "
                        "terms); repeatable")
    parser.add_argument("--keypoint-format", choices=tuple(KEYPOINT_FORMATS),
                        help="format of keypoints/NAME_keypoints.json (default: the one the "
                        "files name, else by their point count; 17 points are coco17)")
    parser.add_argument("--flow", choices=FLOW_SOURCES,
                        help="displacements for the flow term: predicted (default, by the "
                        "displacement network) or exact (the true field from gt.npz)")
    parser.add_argument("--flow-net",
                        help="displacement network: auto (default: open with --texture, else "
                        "open-notexture), open, open-notexture, or a checkpoint path")
    parser.add_argument("--texture",
                        help="the subjects' textures, for a network with texture input: a folder "
                        "of UV textures NAME.png, estimate (from each image alone), or other "
                        "(the next image's estimate; ablation); default none")
    parser.add_argument("--refit-net",
                        help="--data-term refit: auto (default, the shipped open network) or a "
                        "ReFit checkpoint path")
    parser.add_argument("--refit-iterations", type=non_negative_int, metavar="T",
                        help="--data-term refit: feedback-update steps (default the network's)")
    parser.add_argument("--init", choices=("regress",),
                        help="initial estimates of a folder without init.npz: regress (the "
                        "HMR/SPIN regressor on each image, cropped around its keypoints); "
                        "default: init.npz when the folder has one, else from scratch")
    parser.add_argument("--regress-net",
                        help="--init regress: auto (default, the shipped open regressor) or a "
                        "regressor checkpoint path")
    parser.add_argument("--flow-rounds", type=positive_int, metavar="R",
                        help="predicted flow: R rounds of predicting from the latest fit and "
                        "fitting (default 1)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda if available; "
                        "under torchrun each rank's own GPU)")
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per batch (default 512 with keypoints only: a batch costs "
                        "nearly the same per iteration whatever its size; 32 with dense terms "
                        "and refit)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the fit's objective: the first batch of each size "
                        "compiles (minutes on a small CPU), later batches of that size fit "
                        "about 3x faster; for datasets of many thousand images")
    parser.add_argument("--shard", metavar="i/N",
                        help="refine only batches k with k %% N == i into the common output "
                        "folder (e.g. a Slurm array); the worker that finds every batch done "
                        "writes the results")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --output")
    parser.add_argument("--overlays", type=non_negative_int, default=8, metavar="K",
                        help="overlay pictures for the first K images (default 8)")
    parser.add_argument("--preset", help="fit preset: refine (default with init.npz), scratch "
                        "(default without: several starts, annealed prior), spin")
    parser.add_argument("--iterations", type=positive_int,
                        help="iterations per stage (preset's: 100)")
    parser.add_argument("--lr", type=positive_float, help="step size (preset's: 0.01)")
    parser.add_argument("--optimizer", choices=("adam", "lbfgs", "lm"), help="optimizer (preset's)")
    parser.add_argument("--limit", type=positive_int, metavar="N",
                        help="refine only the first N images")
    parser.add_argument("--body", default="open", help="body model (default: the open body)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fitkit.refine``; returns the exit code (0; 2: bad input or
    arguments; 1: a failure of the machine; 130: interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if args.regress_net is not None and args.init != "regress":
        parser.error("--regress-net is used only with --init regress")
    return run_command(parser.prog, lambda: _refine(args),
                       interrupted=f"finished batches are kept in {args.output}; run the same "
                       "command with --resume to continue")


def _refine(args: argparse.Namespace) -> int:
    """Run :func:`refine_dataset` with the parsed arguments and print its summary."""
    for module in args.modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise RefineError(f"--import {module}: {error}") from None
    regress_init = ({"init": args.init, "regress_net": args.regress_net or "auto"}
                    if args.init == "regress" else {})
    summary = refine_dataset(
        args.input, args.output, prior=args.prior, data_term=args.data_term, flow=args.flow,
        flow_net=args.flow_net, texture=args.texture, flow_rounds=args.flow_rounds,
        device=args.device, batch_size=args.batch_size, resume=args.resume,
        overwrite=args.overwrite, overlays=args.overlays, preset=args.preset,
        limit=args.limit, body=args.body, progress=not args.quiet, shard=args.shard,
        iterations=args.iterations, lr=args.lr, optimizer=args.optimizer,
        keypoint_format=args.keypoint_format, refit_net=args.refit_net,
        refit_iterations=args.refit_iterations, view=args.view, groups=args.groups,
        compile=args.compile,
        **regress_init,
    )
    print_summary(summary)
    return 0


def print_summary(summary: RefineSummary) -> None:
    """What a run (or one worker of it) did, for the terminal."""
    if not summary.finished:
        print(f"{summary.rows_done} of {summary.rows} rows done in {summary.output}; the worker "
              "that finishes the last batch (or a later --resume) writes the results")
        return
    metrics = summary.metrics_values
    print(metrics_table(metrics))
    flagged = {name: count for name, count in metrics["flagged"].items() if count}
    print(f"{metrics['num_images']} images, {metrics['num_valid']} refined without flags"
          + (f" (flagged: {flagged})" if flagged else "") + f", {summary.seconds:.1f} s")
    print(f"results  {summary.results}\nmetrics  {summary.metrics}")
    if summary.overlays:
        print(f"overlays {summary.overlays[0].parent}/ ({len(summary.overlays)} pictures)")
