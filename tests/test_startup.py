"""``import fitkit`` and ``python -m fitkit.refine --help`` stay cheap: they load none of the heavy
libraries fitkit uses only inside functions (roma loads ``torch._dynamo`` when imported; scipy,
trimesh), and every ``fitkit.NAME`` still resolves. Checked in a fresh process, whose
``sys.modules`` shows what was imported; no timing (``bench/startup.py`` times it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("torch._dynamo", "roma", "scipy", "trimesh")

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


def _probe() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env,
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


def test_rotations_import_roma_on_first_use() -> None:
    """The deferred import still gives roma's results (axis-angle round trip, quaternions)."""
    import torch

    from fitkit.geometry.rotations import (
        axis_angle_to_matrix,
        axis_angle_to_quaternion,
        compose_axis_angle,
        matrix_to_axis_angle,
        quaternion_conjugate,
        quaternion_product,
        quaternion_to_axis_angle,
    )

    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    first = first * (2.5 / first.norm(dim=-1, keepdim=True))  # angles below pi: unique rotvec
    matrix = axis_angle_to_matrix(first)
    assert torch.allclose(matrix.transpose(-1, -2) @ matrix, torch.eye(3, dtype=torch.float64))
    assert torch.allclose(matrix_to_axis_angle(matrix), first)
    product = axis_angle_to_matrix(compose_axis_angle([first, second]))
    assert torch.allclose(product, matrix @ axis_angle_to_matrix(second))
    quat_first, quat_second = axis_angle_to_quaternion(first), axis_angle_to_quaternion(second)
    assert torch.allclose(quat_first[..., 3], torch.cos(first.norm(dim=-1) / 2))
    via_quaternions = quaternion_to_axis_angle(quaternion_product(quat_first, quat_second))
    assert torch.allclose(axis_angle_to_matrix(via_quaternions), product)
    undone = quaternion_product(quat_first, quaternion_conjugate(quat_first))
    assert torch.allclose(undone, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
