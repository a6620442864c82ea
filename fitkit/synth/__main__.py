"""``python -m fitkit.synth``: write a synthetic dataset folder with ground truth.

Example::

    python -m fitkit.synth --out data/synth --num 64 --seed 0 --size 256 --keypoint-noise detector
    python -m fitkit.synth --out data/synth --num 64 --set init.depth=0.2 --set scene.distance=[2,6]
    python -m fitkit.synth --out data/mv --num 100 --views 4      # 100 subjects, 4 cameras each
    python -m fitkit.synth --out data/video --num 50 --frames 16  # 50 sequences of 16 frames

``--views V`` writes a multi-view folder (:mod:`fitkit.synth.multiview`), ``--frames F`` a folder
of sequences (:mod:`fitkit.synth.sequences`); ``--num`` then counts subjects or sequences.

Re-running the same command resumes an interrupted run (finished samples are kept); a second
run writing the same folder at the same time is refused. Failures follow fitkit's error policy
(:func:`fitkit.io.runs.run_command`): one line ``python -m fitkit.synth: error: ...``, exit code
2 for bad arguments or settings, 1 for a failure of the machine (disk full, permission denied).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from fitkit.io.runs import positive_int, run_command
from fitkit.synth.annotate import KEYPOINT_MODES
from fitkit.synth.config import MIN_SIZE, SynthConfig, parse_override, update_config
from fitkit.synth.dataset import generate_dataset
from fitkit.synth.multiview import ViewsConfig, generate_multiview_dataset
from fitkit.synth.sequences import MotionConfig, generate_sequence_dataset


def _size(text: str) -> int:
    value = positive_int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE} pixels, got {value}")
    return value


def _frames(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a sequence needs at least 2 frames, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fitkit.synth",
        description="Render a synthetic dataset of people with OpenPose keypoints, DensePose IUV, "
                    "ground-truth and perturbed initial SMPL parameters.",
    )
    parser.add_argument("--out", required=True, help="dataset folder (created; resumed if it "
                        "holds an interrupted run with the same settings)")
    parser.add_argument("--num", required=True, type=positive_int,
                        help="number of images (of subjects with --views, of sequences with "
                        "--frames)")
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument("--views", type=positive_int, metavar="V",
                        help="multi-view: V calibrated cameras around each subject (gt.npz in "
                        "the world frame, cameras.npz, views/K/ single-view folders)")
    layout.add_argument("--frames", type=_frames, metavar="F",
                        help="sequences: F frames of one subject in smooth motion each, one "
                        "static camera (sequences.npz)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--size", type=_size, default=256,
                        help="image side in pixels (default 256)")
    parser.add_argument("--keypoint-noise", choices=KEYPOINT_MODES, default="detector",
                        help="detector-like keypoints or exact projections (default detector)")
    parser.add_argument("--body", default="open",
                        help="body model for fitkit.body.load_body: 'open' (default), or an "
                        "SMPL-format .npz or .pkl with UVs and DensePose labels")
    parser.add_argument("--config", help="JSON file of settings overrides, nested like "
                        "SynthConfig (scene, lighting, keypoints, init, texture_size)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. init.depth=0.2, "
                        "views.azimuth_jitter=10 (--views), motion.drift=0.5 (--frames) "
                        "(repeatable; applied after --config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fitkit.synth``; returns the exit code (0; 2: bad arguments or
    settings; 1: a failure of the machine; 130: interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configs = {"": SynthConfig(size=args.size, keypoint_noise=args.keypoint_noise)}
    if args.views is not None:
        configs["views"] = ViewsConfig()
    if args.frames is not None:
        configs["motion"] = MotionConfig()
    try:
        overrides = []
        if args.config:
            try:
                with open(args.config) as handle:
                    document = json.load(handle)
            except (OSError, json.JSONDecodeError) as error:
                parser.error(f"--config {args.config}: {error}")
            if not isinstance(document, dict):
                parser.error(f"--config {args.config}: expected a JSON object")
            overrides.append(document)
        overrides += [parse_override(text) for text in args.set]
        for document in overrides:
            for key, option in (("views", "--views"), ("motion", "--frames")):
                if key in document and key not in configs:
                    raise ValueError(f"{key}.* settings apply with {option} only")
                if key in document:
                    section = document.pop(key)
                    if not isinstance(section, dict):
                        raise ValueError(f"setting {key!r} takes a mapping of its fields, got "
                                         f"{section!r}")
                    configs[key] = update_config(configs[key], section, key)
            configs[""] = update_config(configs[""], document)
    except ValueError as error:
        parser.error(str(error))
    config = configs[""]

    def generate() -> int:
        progress = not args.quiet
        if args.views is not None:
            out = generate_multiview_dataset(args.out, args.num, args.views, args.seed, config,
                                             configs["views"], body=args.body, progress=progress)
            print(f"wrote {args.num} subjects x {args.views} views to {out}")
        elif args.frames is not None:
            out = generate_sequence_dataset(args.out, args.num, args.frames, args.seed, config,
                                            configs["motion"], body=args.body, progress=progress)
            print(f"wrote {args.num} sequences x {args.frames} frames to {out}")
        else:
            out = generate_dataset(args.out, args.num, args.seed, config, body=args.body,
                                   progress=progress)
            print(f"wrote {args.num} samples to {out}")
        return 0

    return run_command(parser.prog, generate,
                       interrupted="run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
