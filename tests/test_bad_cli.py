"""The error policy of fitkit's command lines, their resume keyed on content, and their writer
locks.

Every case asserts the exact outcome: the exit code (2: the input or the arguments; 1: the
machine), one line ``PROG: error: ...`` that names the file and field (never a traceback), the
flags and messages of bad samples, and that nothing is written outside the output.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fitkit.body.loaders import resolve_body_path
from fitkit.demo import main as demo_main
from fitkit.io import read_params
from fitkit.refine import main as refine_main
from fitkit.synth import SynthConfig, generate_dataset
from fitkit.synth.__main__ import main as synth_main
from fitkit.train import priors as train_priors
from fitkit.train.__main__ import main as train_main

REFINE = "python -m fitkit.refine"
FAST = ["--iterations", "2", "--overlays", "0", "--quiet"]
NUM = 4


# --------------------------------------------------------------------------- helpers


def error_line(err: str, prog: str) -> str:
    """The one error line of a failed command: the last line of stderr, the only one that
    starts with ``PROG: error:``; no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def live_lock(path: Path) -> None:
    """A lock file held by a live process of this machine (this one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()} {socket.gethostname()}")


def dead_lock(path: Path) -> None:
    """A lock file left by a killed process (one that no longer exists)."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{process.pid} {socket.gethostname()}")


def refine(data: Path, out: Path, *extra: str) -> int:
    return refine_main(["--input", str(data), "--output", str(out), *FAST, *extra])


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 128 x 128 synthetic images with keypoints, DensePose and ground truth."""
    root = tmp_path_factory.mktemp("bad_cli") / "data"
    return generate_dataset(root, NUM, seed=0, config=SynthConfig(size=128), progress=False)


@pytest.fixture()
def data(dataset: Path, tmp_path: Path) -> Path:
    """A copy of the dataset this test may change."""
    return Path(shutil.copytree(dataset, tmp_path / "data"))


@pytest.fixture(scope="module")
def started(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interrupted run: rows 0-1 of 4 done (one part), no results."""
    out = tmp_path_factory.mktemp("started") / "out"
    assert refine(dataset, out, "--batch-size", "2", "--limit", "2") == 0
    for name in ("results.npz", "metrics.json"):
        (out / name).unlink()
    return out


@pytest.fixture()
def run(started: Path, tmp_path: Path) -> Path:
    """A copy of the interrupted run this test may resume."""
    return Path(shutil.copytree(started, tmp_path / "out"))


def resume(dataset: Path, out: Path, *extra: str) -> int:
    return refine(dataset, out, "--batch-size", "2", "--resume", *extra)


# --------------------------------------------------------------------------- refine: arguments


@pytest.mark.parametrize("argv, option", [
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--iterations", "0"], "--iterations"),
])
def test_refine_refuses_values_that_cannot_fit(dataset, tmp_path, capsys, argv, option):
    with pytest.raises(SystemExit) as exit_info:
        refine(dataset, tmp_path / "out", *argv)
    assert exit_info.value.code == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert f"argument {option}:" in line and argv[1] in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:7"])
def test_refine_refuses_a_device_the_machine_lacks(dataset, tmp_path, capsys, device):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU cuda:7")
    assert refine(dataset, tmp_path / "out", "--device", device) == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert f"--device: device {device!r} cannot be used on this machine" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_refine_refuses_cuda_without_a_gpu(dataset, tmp_path, capsys):
    assert refine(dataset, tmp_path / "out", "--device", "cuda") == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert "device 'cuda' cannot be used" in line and "cuda available: False" in line


def test_refine_refuses_compile_with_the_learned_solver(dataset, tmp_path, capsys):
    assert refine(dataset, tmp_path / "out", "--data-term", "refit", "--compile") == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert "--compile" in line and "refit" in line


@pytest.mark.parametrize("argv, ignored", [
    (["--flow", "exact"], "--flow"),
    (["--flow-net", "open"], "--flow-net"),
    (["--texture", "estimate", "--flow-rounds", "2"], "--texture, --flow-rounds"),
    (["--data-term", "flow", "--flow", "exact", "--flow-net", "open"], "--flow-net"),
    (["--data-term", "flow", "--flow", "exact", "--flow-rounds", "3"], "--flow-rounds"),
])
def test_refine_refuses_a_flag_that_the_mode_ignores(dataset, tmp_path, capsys, argv, ignored):
    assert refine(dataset, tmp_path / "out", *argv) == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert f"error: {ignored} would be ignored: " in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- refine: input files


def test_refine_refuses_an_init_without_rows(data, tmp_path, capsys):
    save_npz(data / "init.npz", {k: v[:0] for k, v in load_npz(data / "init.npz").items()})
    assert refine(data, tmp_path / "out") == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert f"{data / 'init.npz'}: key 'image_names' has no rows" in line
    assert not (tmp_path / "out" / "results.npz").exists()


@pytest.mark.parametrize("drop, term, field", [
    ("vertex_ids", "keypoints", "openpose25"),
    ("dp_", "densepose", "dp_I"),
])
def test_refine_refuses_a_body_without_what_its_term_needs(dataset, tmp_path, capsys, drop,
                                                          term, field):
    arrays = load_npz(resolve_body_path("open"))
    body = tmp_path / "body.npz"
    save_npz(body, {k: v for k, v in arrays.items() if not k.startswith(drop)})
    before = snapshot(dataset)
    assert refine(dataset, tmp_path / "out", "--body", str(body), "--data-term", term) == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert str(body) in line and field in line
    assert not (tmp_path / "out" / "results.npz").exists() and snapshot(dataset) == before


@pytest.mark.parametrize("layout", ["truncated gmm", "gmm keys", "vposer", "cnf"])
def test_refine_refuses_a_broken_prior_file_naming_it(dataset, tmp_path, capsys, layout):
    if layout == "truncated gmm":
        prior = tmp_path / "gmm_08.pkl"
        prior.write_bytes(pickle.dumps({"means": np.zeros((8, 69))})[:20])
        named = str(prior)
    elif layout == "gmm keys":
        prior = tmp_path / "gmm_08.pkl"
        prior.write_bytes(pickle.dumps({"mean": np.zeros((8, 69))}, protocol=2))
        named = "means"
    elif layout == "vposer":
        prior = tmp_path / "vposer"
        (prior / "snapshots").mkdir(parents=True)
        (prior / "vposer.yaml").write_text("model_params: {latentD: 32}\n")
        (prior / "snapshots" / "vposer_epoch=00.ckpt").write_bytes(b"not a checkpoint")
        named = "vposer_epoch=00.ckpt"
    else:
        prior = tmp_path / "cnf"
        prior.mkdir()
        (prior / "config.json").write_text('{"format": "fitkit-cnf"}')
        (prior / "weights.pt").write_bytes(b"not a checkpoint")
        named = str(prior)
    assert refine(dataset, tmp_path / "out", "--prior", str(prior)) == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert named in line
    assert not (tmp_path / "out").exists()


def test_refine_refuses_a_module_that_does_not_import(dataset, tmp_path, capsys):
    assert refine(dataset, tmp_path / "out", "--import", "no_such_module_of_terms") == 2
    assert "--import no_such_module_of_terms:" in error_line(capsys.readouterr().err, REFINE)


# --------------------------------------------------------------------------- refine: bad samples


def test_bad_samples_are_flagged_with_their_message_and_the_others_refined(data, tmp_path):
    """A bad IUV file (part id 30 > 24), a missing one and a non-finite initial translation:
    each sample is flagged with its own message; the fourth is refined; nothing is written
    beside the output."""
    iuv = data / "densepose" / "000001_IUV.png"
    pixels = np.array(Image.open(iuv))
    pixels[..., 2][pixels[..., 2] > 0] = 30  # the file's blue channel holds I
    Image.fromarray(pixels).save(iuv)
    (data / "densepose" / "000002_IUV.png").unlink()
    init = load_npz(data / "init.npz")
    init["transl"][3, 0] = np.inf
    save_npz(data / "init.npz", init)
    before, siblings = snapshot(data), sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    assert refine(data, out, "--data-term", "keypoints,densepose") == 0
    results = read_params(out / "results.npz")
    assert results["flag_bad_input"].tolist() == [False, True, True, True]
    errors = results["error"].tolist()
    assert errors[0] == ""
    assert "000001_IUV.png" in errors[1] and "24" in errors[1]
    assert "000002_IUV.png" in errors[2]
    assert "transl" in errors[3]
    start = read_params(data / "init.npz")
    assert not np.allclose(results["body_pose"][0], start["body_pose"][0])
    assert snapshot(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*siblings, "out"])


# --------------------------------------------------------------------------- refine: resume


def test_a_resume_after_init_changed_is_refused(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert refine(data, out, "--limit", "1") == 0
    init = load_npz(data / "init.npz")
    init["betas"][2] += 0.5  # a row this run has not refined yet
    save_npz(data / "init.npz", init)
    parts = snapshot(out / "parts")
    assert refine(data, out, "--resume") == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert f"{out} holds a run with other settings (init.npz differ)" in line
    assert snapshot(out / "parts") == parts


def test_a_truncated_part_is_redone_with_a_warning(dataset, run, capsys):
    (part,) = (run / "parts").iterdir()
    part.write_bytes(part.read_bytes()[:100])
    assert resume(dataset, run) == 0
    err = capsys.readouterr().err
    assert f"fitkit.refine: warning: {part} is unreadable" in err and "refined again" in err
    assert "Traceback" not in err
    results = read_params(run / "results.npz")
    assert len(results["image_names"]) == NUM and np.isfinite(results["body_pose"]).all()
    assert read_params(part)["image_names"].tolist() == ["000000", "000001"]


# --------------------------------------------------------------------------- refine: two writers


def test_a_second_writer_is_refused_while_the_first_lives(dataset, run, capsys):
    lock = run / ".locks" / "writer.lock"
    live_lock(lock)
    parts = snapshot(run / "parts")
    assert resume(dataset, run) == 2
    line = error_line(capsys.readouterr().err, REFINE)
    assert f"output folder {run} is being written by another run" in line
    assert f"process {os.getpid()} on {socket.gethostname()}" in line and str(lock) in line
    assert snapshot(run / "parts") == parts and not (run / "results.npz").exists()
    assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}"  # not taken


def test_a_run_is_refused_while_a_shard_of_it_lives(dataset, run, capsys):
    live_lock(run / ".locks" / "shard-1-2.lock")
    assert resume(dataset, run) == 2
    assert "shard-1-2.lock" in error_line(capsys.readouterr().err, REFINE)
    assert not (run / ".locks" / "writer.lock").exists()


def test_one_shard_is_refused_twice_but_other_shards_share_the_folder(dataset, run, capsys):
    live_lock(run / ".locks" / "shard-0-2.lock")
    assert refine(dataset, run, "--batch-size", "2", "--shard", "0/2") == 2
    assert "shard-0-2.lock" in error_line(capsys.readouterr().err, REFINE)
    assert refine(dataset, run, "--batch-size", "2", "--shard", "1/2") == 0
    assert (run / "results.npz").is_file()  # shard 1 did rows 2-3, the last ones
    assert sorted(p.name for p in (run / ".locks").iterdir()) == ["shard-0-2.lock"]


def test_the_lock_of_a_killed_run_is_taken_over(dataset, run):
    lock = run / ".locks" / "writer.lock"
    dead_lock(lock)
    assert resume(dataset, run) == 0
    assert (run / "results.npz").is_file() and not lock.exists()


# --------------------------------------------------------------------------- refine: the machine


def full_disk(monkeypatch: pytest.MonkeyPatch, failing: str, code: int = errno.ENOSPC) -> None:
    """Writes of files named ``failing`` (a temporary ``.NAME.PID.tmp``) fail with ``code``."""
    write_bytes = Path.write_bytes

    def write(path: Path, data: bytes) -> int:
        if path.name.startswith(f".{failing}."):
            raise OSError(code, os.strerror(code), str(path))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", write)


def test_a_full_disk_mid_run_exits_1_and_leaves_complete_files(dataset, run, monkeypatch,
                                                               capsys):
    full_disk(monkeypatch, "rows_000002-000004.npz")
    assert resume(dataset, run) == 1
    line = error_line(capsys.readouterr().err, REFINE)
    assert line == (f"{REFINE}: error: {run / 'parts' / 'rows_000002-000004.npz'}: "
                    "No space left on device")
    assert sorted(p.name for p in (run / "parts").iterdir()) == ["rows_000000-000002.npz"]
    assert not (run / "results.npz").exists() and not list(run.rglob("*.tmp"))
    assert not list((run / ".locks").iterdir())  # the lock is released
    monkeypatch.undo()
    assert resume(dataset, run) == 0 and (run / "results.npz").is_file()


def test_permission_lost_before_the_results_exits_1(dataset, run, monkeypatch, capsys):
    full_disk(monkeypatch, "results.npz", errno.EACCES)
    assert resume(dataset, run) == 1
    line = error_line(capsys.readouterr().err, REFINE)
    assert line == f"{REFINE}: error: {run / 'results.npz'}: Permission denied"
    assert not (run / "results.npz").exists() and not list(run.rglob("*.tmp"))
    assert len(list((run / "parts").iterdir())) == 2  # the finished batches are kept


def test_an_output_folder_that_cannot_be_made_exits_1(dataset, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert refine(dataset, blocker / "out") == 1
    line = error_line(capsys.readouterr().err, REFINE)
    assert str(blocker / "out") in line and "Not a directory" in line


# --------------------------------------------------------------------------- train


def train(*argv: str) -> int:
    return train_main(list(argv))


@pytest.mark.parametrize("argv, field", [
    (["gmm", "--num-poses", "0"], "num_poses must be a finite number > 0, got 0"),
    (["gmm", "--steps", "0"], "steps must be a finite number > 0, got 0"),
    (["gmm", "--num-poses", "4"], "num_poses (4) must be at least num_components (8)"),
    (["vposer", "--batch-size", "0"], "batch_size must be a finite number > 0, got 0"),
    (["vposer", "--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["cnf", "--steps", "-3"], "steps must be a finite number > 0, got -3"),
    (["flow", "--batch-size", "0"], "batch_size must be a finite number > 0, got 0"),
    (["flow", "--steps", "0"], "steps must be a finite number > 0, got 0"),
    (["refit", "--betas-weight", "-1"], "--betas-weight must be >= 0, got -1.0"),
])
def test_train_refuses_settings_that_would_not_train(tmp_path, capsys, argv, field):
    out = tmp_path / "model"
    assert train(argv[0], "--out", str(out), *argv[1:]) == 2
    line = error_line(capsys.readouterr().err, f"python -m fitkit.train {argv[0]}")
    assert line.endswith(field)
    assert list(tmp_path.iterdir()) == []  # no untrained model, no lock


def test_train_flow_refuses_a_device_the_machine_lacks(tmp_path, capsys):
    assert train("flow", "--out", str(tmp_path / "net.pt"), "--device", "tpu") == 2
    line = error_line(capsys.readouterr().err, "python -m fitkit.train flow")
    assert "device 'tpu' cannot be used on this machine" in line
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_second_trainer_on_the_same_output(tmp_path, capsys):
    out = tmp_path / "gmm.pkl"
    live_lock(tmp_path / "gmm.pkl.lock")
    argv = ["gmm", "--out", str(out), "--num-poses", "200", "--steps", "2",
            "--num-components", "2"]
    assert train(*argv) == 2
    line = error_line(capsys.readouterr().err, "python -m fitkit.train gmm")
    assert f"training output {out} is being written by another run" in line
    assert not out.exists()
    dead_lock(tmp_path / "gmm.pkl.lock")  # killed: its lock is taken over
    assert train(*argv) == 0
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["gmm.pkl"]


class Killed(Exception):
    """Stands in for a killed process."""


def test_train_resume_refuses_fewer_steps_and_a_damaged_checkpoint(tmp_path, monkeypatch,
                                                                   capsys):
    out = tmp_path / "gmm.pkl"
    calls = {"n": 0}
    em_step = train_priors.em_step

    def killed_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed
        return em_step(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_priors, "em_step", killed_at_step_3)
        with pytest.raises(Killed):
            train_priors.train_gmm(out, num_poses=200, steps=4, num_components=2,
                                   checkpoint_every=1)
    checkpoint = train_priors.resume_path(out)
    argv = ["gmm", "--out", str(out), "--num-poses", "200", "--num-components", "2",
            "--resume"]
    assert train(*argv, "--steps", "1") == 2
    line = error_line(capsys.readouterr().err, "python -m fitkit.train gmm")
    assert line.endswith(f"{checkpoint}: the checkpoint is at step 2, past steps=1; resume "
                         "with at least 2 steps")
    assert train(*argv, "--steps", "6") == 0  # EM may be extended
    assert out.is_file() and not checkpoint.exists()
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    assert train(*argv, "--steps", "6") == 2
    line = error_line(capsys.readouterr().err, "python -m fitkit.train gmm")
    assert f"{checkpoint}: not a readable resume checkpoint" in line


def test_train_flow_resume_compares_the_body_file(tmp_path, capsys):
    from fitkit.nets import FLOWNET_CONFIGS, FlowNet, save_flownet

    out = tmp_path / "net.pt"
    training = {"step": 1, "optimizer": {}, "rng": torch.get_rng_state(), "history": [],
                "settings": {"body": "sha256:0000"}}
    save_flownet(out, FlowNet(FLOWNET_CONFIGS["small"]), training=training)
    assert train("flow", "--out", str(out), "--device", "cpu", "--resume") == 2
    line = error_line(capsys.readouterr().err, "python -m fitkit.train flow")
    assert f"{out}: resume with the run's own settings" in line
    assert "body: checkpoint 'sha256:0000', given 'sha256:" in line


# --------------------------------------------------------------------------- synth, demo


def test_synth_refuses_a_second_writer_and_takes_over_a_killed_ones_lock(tmp_path, capsys):
    out = tmp_path / "data"
    lock = out / "records" / "writer.lock"
    live_lock(lock)
    argv = ["--out", str(out), "--num", "1", "--size", "64", "--quiet",
            "--set", "texture_size=64"]
    assert synth_main(argv) == 2
    line = error_line(capsys.readouterr().err, "python -m fitkit.synth")
    assert f"dataset folder {out} is being written by another run" in line
    assert sorted(p.name for p in out.rglob("*")) == ["records", "writer.lock"]
    dead_lock(lock)
    assert synth_main(argv) == 0
    assert (out / "init.npz").is_file() and not lock.exists()


def test_synth_refuses_a_setting_that_is_not_finite(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth_main(["--out", str(tmp_path / "data"), "--num", "1",
                    "--set", "scene.distance=[NaN, 6]"])
    assert exit_info.value.code == 2
    line = error_line(capsys.readouterr().err, "python -m fitkit.synth")
    assert "setting 'scene.distance' takes 2 finite numbers" in line
    assert list(tmp_path.iterdir()) == []


def test_demo_exits_1_when_its_folder_cannot_be_made(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert demo_main(["--out", str(blocker / "demo"), "--num", "1"]) == 1
    line = error_line(capsys.readouterr().err, "python -m fitkit.demo")
    assert line == f"python -m fitkit.demo: error: {blocker / 'demo'}: Not a directory"
