"""``import fitkit`` and ``python -m fitkit.refine --help`` stay cheap: they load none of the heavy
libraries fitkit uses only inside functions (``torch._dynamo``, scipy, trimesh), and every
``fitkit.NAME`` still resolves; converting rotations loads no ``torch._dynamo`` either. Checked in
a fresh process, whose ``sys.modules`` shows what was imported; no timing (``bench/startup.py``
times it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("torch._dynamo", "scipy", "trimesh")

PROBE = textwrap.dedent(
    """
    import contextlib, io, json, runpy, sys
    heavy = HEAVY
    report = {}
    import fitkit
    report["after_import"] = [name for name in heavy if name in sys.modules]
    sys.argv = ["fitkit.refine", "--help"]
    with contextlib.redirect_stdout(io.StringIO()) as usage:
        try:
            runpy.run_module("fitkit.refine", run_name="__main__", alter_sys=True)
        except SystemExit as done:
            report["help_exit"] = done.code
    report["help_mentions_input"] = "--input" in usage.getvalue()
    report["after_help"] = [name for name in heavy if name in sys.modules]
    report["all"] = list(fitkit.__all__)
    report["fit"] = fitkit.fit.__module__ + "." + fitkit.fit.__name__
    report["load_body"] = fitkit.load_body.__module__ + "." + fitkit.load_body.__name__
    report["FitResult"] = fitkit.FitResult.__name__
    from fitkit import fit
    report["from_import_same"] = fit is fitkit.fit
    lazy = ["synth", "train", "eval", "refine", "render", "nets", "geometry"]
    report["lazy"] = {name: getattr(fitkit, name).__name__ for name in lazy}
    report["in_dir"] = all(name in dir(fitkit) for name in lazy)
    try:
        fitkit.no_such_name
    except AttributeError as error:
        report["missing"] = str(error)
    print(json.dumps(report))
    """
).replace("HEAVY", repr(HEAVY))


ROTATIONS_PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    import fitkit
    from fitkit.geometry.rotations import axis_angle_to_matrix
    report = {"identity": axis_angle_to_matrix(torch.zeros(1, 3)).tolist()}
    report["after_first"] = "torch._dynamo" in sys.modules
    from fitkit.geometry import average_rotations, matrix_to_axis_angle, procrustes_align
    rotvec = torch.randn(4, 3, requires_grad=True)
    matrices = axis_angle_to_matrix(rotvec)
    points = torch.randn(4, 6, 3)
    loss = (matrix_to_axis_angle(matrices).sum() + average_rotations(matrices).sum()
            + procrustes_align(points, points @ matrices).aligned.sum())
    loss.backward()
    report["after_all"] = "torch._dynamo" in sys.modules
    print(json.dumps(report))
    """
)


def _probe(code: str = PROBE) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_and_refine_help_load_no_heavy_library_and_names_resolve() -> None:
    report = _probe()
    assert report["after_import"] == [], "import fitkit loaded " + ", ".join(report["after_import"])
    assert report["help_exit"] == 0 and report["help_mentions_input"]
    assert report["after_help"] == [], "refine --help loaded " + ", ".join(report["after_help"])
    assert report["all"] == ["FitResult", "fit", "load_body"]
    assert report["fit"] == "fitkit.api.fit"
    assert report["load_body"] == "fitkit.body.model.load_body"
    assert report["FitResult"] == "FitResult"
    assert report["from_import_same"]
    assert report["lazy"] == {name: f"fitkit.{name}" for name in report["lazy"]}
    assert set(report["lazy"]) == {"synth", "train", "eval", "refine", "render", "nets",
                                   "geometry"}
    assert report["in_dir"]
    assert "no_such_name" in report["missing"]


def test_first_rotation_call_loads_no_dynamo() -> None:
    """fitkit converts rotations with its own code: the first ``axis_angle_to_matrix`` in a fresh
    process, then the other conversions, averaging and Procrustes with a backward pass, load no
    ``torch._dynamo`` (roma's import did: about 2 s per process)."""
    report = _probe(ROTATIONS_PROBE)
    assert report["identity"] == [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]
    assert not report["after_first"], "axis_angle_to_matrix loaded torch._dynamo"
    assert not report["after_all"], "a rotation function loaded torch._dynamo"
