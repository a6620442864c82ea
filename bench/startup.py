"""Time what a fresh process pays to start fitkit: ``import fitkit`` against ``import torch``.

    python bench/startup.py [--runs 9] [--checkout NAME=PATH ...] [--as-is]

Each round starts one fresh Python process per command and checkout, in turn (so a change in the
machine's load hits every row alike), and times it from start to exit: ``import torch``,
``import fitkit``, ``python -m fitkit.refine --help`` and a tiny fit (the open body and GMM
loaded, two people fitted for two iterations: what every fitting process pays before its
work). The table gives each row's median and minimum over ``--runs`` rounds and the median's
excess over ``import torch``, for the wall time and for the CPU time (user + system, all
threads) of the process: on a machine busy with other work the CPU time is the steadier figure.
``--checkout`` times other source trees side by side (e.g. ``--checkout before=/tmp/fk_head
--checkout after=.``), each imported from its own folder; the default is this repository.

Python files are byte-compiled once into a temporary cache (``PYTHONPYCACHEPREFIX``) and one
untimed round warms it, so the figures are those of an installed package, even where the
environment sets ``PYTHONDONTWRITEBYTECODE``; ``--as-is`` keeps the caller's environment instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMMANDS: dict[str, list[str]] = {
    "import torch": ["-c", "import torch"],
    "import fitkit": ["-c", "import fitkit"],
    "fitkit.refine --help": ["-m", "fitkit.refine", "--help"],
    "a tiny fit": ["-c", (
        "import torch, fitkit\n"
        "from fitkit.fitting import SMPLify, preset\n"
        "from fitkit.geometry import Camera\n"
        "from fitkit.terms import KeypointsTerm\n"
        "body = fitkit.load_body('open')\n"
        "camera = Camera.from_image_size(128, 128, batch_size=2)\n"
        "config = preset('spin').with_stages(iterations=2)\n"
        "SMPLify(body, fitkit.priors.load('gmm'), config).fit(\n"
        "    KeypointsTerm(torch.rand(2, 25, 3) * 100), camera)\n")],
}
"""Label -> the Python arguments of each timed process."""


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1-minute load average, or ``n/a`` where the platform has none."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


def run_once(arguments: list[str], folder: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds from starting ``python ARGUMENTS`` in ``folder`` to its exit, and the CPU
    seconds (user + system) it used.

    Raises:
        RuntimeError: the process failed (its stderr's last line is in the message).
    """
    cpu_start = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=folder, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"python {' '.join(arguments)} in {folder} exited "
                           f"{done.returncode}: {last}")
    return seconds, cpu


def checkout_env(folder: Path, base: dict[str, str]) -> dict[str, str]:
    """The environment that imports fitkit from ``folder``; checked by importing it once.

    Raises:
        RuntimeError: fitkit is imported from somewhere else.
    """
    env = dict(base, PYTHONPATH=os.pathsep.join(
        [str(folder), *filter(None, [base.get("PYTHONPATH")])]))
    found = subprocess.run([sys.executable, "-c", "import fitkit; print(fitkit.__file__)"],
                           cwd=folder, env=env, capture_output=True, text=True)
    if found.returncode != 0:
        raise RuntimeError(f"fitkit is not importable from {folder}: {found.stderr.strip()}")
    where = Path(found.stdout.strip()).resolve()
    if folder.resolve() not in where.parents:
        raise RuntimeError(f"fitkit is imported from {where}, not from {folder}")
    return env


def parse_checkout(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` -> ``(NAME, PATH)`` (argparse type)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER with an existing folder: {text}")
    return name, Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--checkout", type=parse_checkout, action="append", default=[],
                        metavar="NAME=PATH", help="a source tree to time (repeatable)")
    parser.add_argument("--as-is", action="store_true",
                        help="keep the caller's bytecode settings (no warm bytecode cache)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    checkouts = args.checkout or [("this", REPO)]

    base = dict(os.environ)
    cache = None
    if not args.as_is:
        cache = tempfile.TemporaryDirectory(prefix="fitkit-startup-pycache-")
        base.pop("PYTHONDONTWRITEBYTECODE", None)
        base["PYTHONPYCACHEPREFIX"] = cache.name
    try:
        envs = {name: checkout_env(folder, base) for name, folder in checkouts}
        jobs = [(name, folder, label) for name, folder in checkouts for label in COMMANDS
                if not (label == "import torch" and name != checkouts[0][0])]
        load_before = load_average()
        times: dict[tuple[str, str], list[tuple[float, float]]] = {
            (name, label): [] for name, _, label in jobs}
        for round_index in range(args.runs + 1):  # round 0 warms caches and is not kept
            shift = round_index % len(jobs)
            for name, folder, label in jobs[shift:] + jobs[:shift]:
                measured = run_once(COMMANDS[label], folder, envs[name])
                if round_index > 0:
                    times[(name, label)].append(measured)
        load_after = load_average()
    finally:
        if cache is not None:
            cache.cleanup()

    torch_times = times[(checkouts[0][0], "import torch")]
    torch_median = [statistics.median(t[kind] for t in torch_times) for kind in (0, 1)]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
          f"load average {load_before} before, {load_after} after")
    print(f"{args.runs} rounds, each process once per round in rotating order; wall and CPU "
          f"time of a fresh process; bytecode cache: "
          f"{'as the environment has it' if args.as_is else 'warm'}")
    print("| checkout | command | wall median s | wall min s | wall over torch s "
          "| CPU median s | CPU min s | CPU over torch s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, _, label in jobs:
        row = [name, label]
        for kind in (0, 1):
            series = [t[kind] for t in times[(name, label)]]
            median = statistics.median(series)
            excess = "" if label == "import torch" else f"{median - torch_median[kind]:+.3f}"
            row += [f"{median:.3f}", f"{min(series):.3f}", excess]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
