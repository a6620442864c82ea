"""python -m fitkit.refine: end to end on a tiny synthetic dataset, resume, bad samples, exits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fitkit.io import read_params
from fitkit.refine import main
from fitkit.synth import SynthConfig, generate_dataset

NUM = 4
FAST = ["--iterations", "5", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 128 x 128 synthetic images with detector-like keypoints."""
    root = tmp_path_factory.mktemp("refine") / "data"
    return generate_dataset(root, NUM, seed=0, config=SynthConfig(size=128), progress=False)


def copy_dataset(dataset: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    return copy


def test_refine_writes_results_metrics_and_overlays(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--input", str(dataset), "--output", str(out), "--overlays", "2", *FAST]) == 0
    results = read_params(out / "results.npz")
    init = read_params(dataset / "init.npz")
    assert results["image_names"].tolist() == init["image_names"].tolist()
    assert results["energy"].shape == (NUM,) and results["flag_bad_input"].shape == (NUM,)
    assert not np.allclose(results["body_pose"], init["body_pose"])
    metrics = json.loads((out / "metrics.json").read_text())
    for label in ("init", "refined"):
        assert set(metrics[label]) == {"mpjpe", "pa_mpjpe", "pve", "pa_pve"}
        assert all(value > 0 for value in metrics[label].values())
    assert metrics["num_valid"] == NUM and metrics["flagged"]["bad_input"] == 0
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000000.png", "000001.png"]


def test_a_run_refuses_a_non_empty_output_and_resumes_to_the_same_results(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--input", str(dataset), "--batch-size", "2", "--overlays", "0", *FAST]
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert main([*args, "--output", str(full)]) == 0
    # an interrupted run: two of four images done, and its final files lost
    assert main([*args, "--output", str(partial), "--limit", "2"]) == 0
    for name in ("results.npz", "metrics.json"):
        (partial / name).unlink()
    assert len(list((partial / "parts").iterdir())) == 1
    assert main([*args, "--output", str(partial)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--output", str(partial), "--resume"]) == 0
    assert len(list((partial / "parts").iterdir())) == 2
    expected, resumed = read_params(full / "results.npz"), read_params(partial / "results.npz")
    for key, value in expected.items():
        assert np.array_equal(value, resumed[key]), key
    assert main([*args, "--output", str(partial), "--resume", "--prior", "vposer"]) == 2
    assert "prior" in capsys.readouterr().err


def test_bad_samples_are_flagged_and_the_others_refined(dataset: Path, tmp_path: Path) -> None:
    data = copy_dataset(dataset, tmp_path)
    (data / "keypoints" / "000001_keypoints.json").unlink()
    (data / "keypoints" / "000002_keypoints.json").write_text('{"people": []}')
    out = tmp_path / "out"
    assert main(["--input", str(data), "--output", str(out), "--overlays", "0", *FAST]) == 0
    results, init = read_params(out / "results.npz"), read_params(data / "init.npz")
    assert results["flag_bad_input"].tolist() == [False, True, False, False]
    assert "000001_keypoints.json" in str(results["error"][1])
    assert results["flag_no_data"].tolist() == [False, True, True, False]
    unchanged = np.isclose(results["body_pose"], init["body_pose"]).all(axis=1)
    assert unchanged.tolist() == [False, True, True, False]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_valid"] == 2 and metrics["flagged"]["bad_input"] == 1


@pytest.mark.parametrize("term", ["densepose", "flow"])
def test_dense_terms_run_end_to_end(dataset: Path, tmp_path: Path, term: str) -> None:
    out = tmp_path / "out"
    args = ["--input", str(dataset), "--output", str(out), "--data-term", term, "--limit", "2",
            "--overlays", "0", *(["--flow", "exact"] if term == "flow" else []), *FAST]
    assert main(args) == 0
    results = read_params(out / "results.npz")
    assert len(results["image_names"]) == 2 and f"energy_{term}" in results


def test_bad_input_exits_2_with_a_message_and_no_traceback(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "input folder not found" in err and "nowhere" in err and "Traceback" not in err
    assert main(["--input", str(dataset), "--output", str(tmp_path / "o"), "--data-term",
                 "flow", "--flow-net", str(tmp_path / "absent.pt")]) == 2
    err = capsys.readouterr().err
    assert "displacement network not found" in err and "absent.pt" in err
    data = copy_dataset(dataset, tmp_path)
    (data / "init.npz").write_bytes(b"not a zip")
    assert main(["--input", str(data), "--output", str(tmp_path / "o")]) == 2
    assert "init.npz" in capsys.readouterr().err


def test_the_module_runs_as_a_command(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", "fitkit.refine", "--input", str(tmp_path / "nowhere"), "--output",
         str(tmp_path / "out")], capture_output=True, text=True, env=env, check=False,
    )
    assert done.returncode == 2
    assert "input folder not found" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("terms, expected", [
    (("keypoints",), 512),
    (("keypoints", "keypoints3d"), 512),
    (("keypoints", "densepose"), 32),
    (("flow",), 32),
    (("refit",), 32),
])
def test_the_default_batch_is_large_only_when_every_term_is_light(terms, expected) -> None:
    from fitkit.refine.run import default_batch_size

    assert default_batch_size(terms) == expected


def test_the_default_batch_fits_a_keypoint_dataset_as_one_part(dataset: Path,
                                                                tmp_path: Path) -> None:
    """No --batch-size: keypoints refine all four images in one batch (one part file), and the
    results equal a run of batch 2 (batches are independent)."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--input", str(dataset), "--overlays", "0", *FAST]
    assert main([*args, "--output", str(one)]) == 0
    assert main([*args, "--output", str(two), "--batch-size", "2"]) == 0
    assert len(list((one / "parts").glob("*.npz"))) == 1
    assert len(list((two / "parts").glob("*.npz"))) == 2
    first, second = read_params(one / "results.npz"), read_params(two / "results.npz")
    np.testing.assert_allclose(first["body_pose"], second["body_pose"], atol=1e-4)
