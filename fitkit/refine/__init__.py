"""``python -m fitkit.refine``: refine the initial estimates of a dataset folder.

Example::

    python -m fitkit.refine --input data/synth --output out/kp --prior gmm --data-term keypoints
    python -m fitkit.refine --input data/synth --output out/kd --data-term keypoints,densepose
    python -m fitkit.refine --input data/synth --output out/flow --data-term flow
    python -m fitkit.refine --input data/synth --output out/flow_ub --data-term flow --flow exact
    python -m fitkit.refine ... --shard 3/16          # one worker of 16 (a Slurm array)
    torchrun --nproc_per_node 8 -m fitkit.refine ...  # one worker per process

The dataset folder is DESIGN.md's (:mod:`fitkit.io.dataset`): ``init.npz`` (the rows to refine,
in order), ``images/NAME.png|jpg``, each data term's files where its ``dataset_pattern`` says
(``keypoints/NAME_keypoints.json``, ``densepose/NAME_IUV.png``, ...), optional ``gt.npz``. The
output folder (a run store, :mod:`fitkit.io.runs`) gets::

    settings.json                   the run's settings (a resumed or joined run must match them)
    parts/rows_START-STOP.npz       each finished batch, written as soon as it is done
    results.npz                     all rows (docs/formats.md layout), energy, energy_TERM,
                                    flag_FLAG, error
    metrics.json                    before/after MPJPE, PA-MPJPE, PVE, PA-PVE (mm), with gt.npz
    overlays/NAME.png               image | initial mesh | refined mesh, for the first K images

Every file is written under a temporary name and renamed. An interrupted run continues with
``--resume`` (finished batches are kept; a part damaged since is redone, with a warning);
without it a non-empty output folder is refused unless ``--overwrite``. A resume is refused
when a setting or the content of ``init.npz``, ``gt.npz``, the body, prior or network file
changed. Workers of one run (``--shard i/N`` or torchrun ranks) share the output folder:
batch k is shard ``k % N``'s, parts are named by their rows, and whoever finds every row done
writes ``results.npz`` and ``metrics.json`` (under a lock; with torchrun, rank 0 after all ranks
finish). A run holds a writer lock (``.locks/writer.lock``; a shard ``.locks/shard-I-N.lock``)
while it writes, so a second run on the same folder, or a second copy of one shard, is refused
while the first lives (a killed run's lock is taken over).

Errors: a sample whose files are missing or malformed, or whose initial parameters are unusable,
keeps its initial parameters and is flagged ``bad_input`` (its message in ``error``); the others
are refined. Bad arguments, an unusable dataset, prior, body or network, flow options that the
data terms would ignore, or a device this machine lacks stop with one line naming the file and
field (or option) and exit code 2; a failure of the machine (disk full, permission denied) with
one line and exit code 1 (:func:`fitkit.io.runs.run_command`), leaving only complete files.

A multi-view folder (``cameras.npz``, ``views/K/``) is fitted one world body per subject from
all its views (``--view K``: one view alone, as ``views/K``); a sequences folder
(``sequences.npz``) with one shape per sequence and the temporal term (``--no-groups``: frame by
frame); :mod:`fitkit.refine.folders` says how.

Data terms come from the registry (:mod:`fitkit.terms`); ``--import MODULE`` imports a user's
module first, so a term it registers can be named in ``--data-term``.
"""

from fitkit.refine.cli import build_parser, main
from fitkit.refine.inputs import read_textures
from fitkit.refine.report import METRICS, compute_metrics, metrics_table, write_overlays
from fitkit.refine.run import FLOW_SOURCES, RefineError, RefineSummary, refine_dataset

__all__ = [
    "FLOW_SOURCES",
    "METRICS",
    "RefineError",
    "RefineSummary",
    "build_parser",
    "compute_metrics",
    "main",
    "metrics_table",
    "read_textures",
    "refine_dataset",
    "write_overlays",
]
