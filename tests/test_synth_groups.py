"""Multi-view and sequence folders: fitkit.synth --views / --frames, and fitkit.refine on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fitkit.body import load_body
from fitkit.fitter import Fitter
from fitkit.fitting import FitBatch, FitResult, SMPLify
from fitkit.geometry import Camera, world_to_camera_params
from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.io import read_openpose_people, read_params
from fitkit.refine import main as refine
from fitkit.refine.folders import open_rows, sequence_batches
from fitkit.synth import (
    MotionConfig,
    SynthConfig,
    ViewsConfig,
    generate_multiview_dataset,
    generate_sequence_dataset,
)
from fitkit.synth.__main__ import main as synth
from fitkit.synth.dataset import sample_files

SIZE = 64
SUBJECTS, VIEWS = 3, 3
SEQUENCES, FRAMES = 2, 8
CONFIG = SynthConfig(size=SIZE, keypoint_noise="none", texture_size=64)
PARAMS = ("global_orient", "body_pose", "betas", "transl")
FAST = ["--iterations", "5", "--quiet", "--overlays", "0"]


def tensors(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(params[key]) for key in PARAMS}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".lock"}


def parts(out: Path) -> list[tuple[int, int]]:
    """The row ranges of a refine run's part files."""
    return sorted(tuple(int(x) for x in p.stem.removeprefix("rows_").split("-"))
                  for p in (out / "parts").glob("rows_*.npz"))


@pytest.fixture(scope="module")
def body():
    return load_body("open")


@pytest.fixture(scope="module")
def multiview(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three subjects, each seen by three cameras, exact keypoints."""
    root = tmp_path_factory.mktemp("groups") / "mv"
    return generate_multiview_dataset(root, SUBJECTS, VIEWS, seed=11, config=CONFIG,
                                      progress=False)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sequences of eight frames, exact keypoints."""
    root = tmp_path_factory.mktemp("groups") / "video"
    return generate_sequence_dataset(root, SEQUENCES, FRAMES, seed=12, config=CONFIG,
                                     progress=False)


# --------------------------------------------------------------------------- synth --views


def test_a_multiview_folder_holds_world_gt_cameras_and_complete_view_folders(multiview):
    names = [f"{i:06d}" for i in range(SUBJECTS)]
    gt = read_params(multiview / "gt.npz")
    assert gt["image_names"].tolist() == names
    with np.load(multiview / "cameras.npz") as npz:
        cameras = dict(npz)
    assert cameras["image_names"].tolist() == names
    shapes = {"R": (3, 3), "t": (3,), "focal_length": (2,), "camera_center": (2,),
              "image_size": (2,)}
    for key, tail in shapes.items():
        assert cameras[key].shape == (SUBJECTS, VIEWS, *tail)
    R = cameras["R"].astype(np.float64)
    assert np.allclose(R @ R.transpose(0, 1, 3, 2), np.eye(3), atol=1e-5)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-5)
    assert (cameras["image_size"] == SIZE).all()
    for view in range(VIEWS):
        folder = multiview / "views" / str(view)
        for name in names:
            assert all(path.is_file() for path in sample_files(folder, name))
        for file in ("gt.npz", "init.npz"):
            params = read_params(folder / file)
            assert params["image_names"].tolist() == names
            assert np.allclose(params["focal_length"], cameras["focal_length"][:, view])
        assert json.loads((folder / "meta.json").read_text())["view"] == view


def test_each_view_sees_the_world_body_through_its_camera(multiview, body):
    gt = read_params(multiview / "gt.npz")
    with np.load(multiview / "cameras.npz") as npz:
        cameras = dict(npz)
    world = tensors(gt)
    with torch.no_grad():
        root = body(betas=world["betas"]).joints[:, 0]
        world_joints = body(**world).keypoints("openpose25")
    for view in range(VIEWS):
        folder = multiview / "views" / str(view)
        local = read_params(folder / "gt.npz")
        R, t = torch.from_numpy(cameras["R"][:, view]), torch.from_numpy(cameras["t"][:, view])
        orient, transl = world_to_camera_params(world["global_orient"], world["transl"], root,
                                                R, t)
        assert torch.allclose(axis_angle_to_matrix(orient),
                              axis_angle_to_matrix(torch.from_numpy(local["global_orient"])),
                              atol=1e-5)
        assert np.allclose(transl.numpy(), local["transl"], atol=1e-4)
        assert np.array_equal(local["betas"], gt["betas"])
        assert np.array_equal(local["body_pose"], gt["body_pose"])
        camera = Camera(torch.from_numpy(cameras["focal_length"][:, view]),
                        torch.from_numpy(cameras["camera_center"][:, view]),
                        torch.from_numpy(cameras["image_size"][:, view]), R, t)
        projected = camera.project_world(world_joints).numpy()
        for row, name in enumerate(gt["image_names"]):
            keypoints = read_openpose_people(folder / "keypoints" / f"{name}_keypoints.json")[0]
            seen = keypoints[:, 2] > 0
            assert seen.sum() >= 10
            assert np.abs(keypoints[seen, :2] - projected[row, seen]).max() < 0.05


def test_cameras_stand_around_the_subject_on_its_ground_frame(multiview, body):
    gt = read_params(multiview / "gt.npz")
    with np.load(multiview / "cameras.npz") as npz:
        R, t = npz["R"].astype(np.float64), npz["t"].astype(np.float64)
    with torch.no_grad():
        output = body(**tensors(gt))
    # the world frame: y down, the lowest point on the ground, the root joint above the origin
    assert np.allclose(output.vertices[..., 1].amax(dim=1).numpy(), 0.0, atol=1e-5)
    assert np.allclose(output.joints[:, 0, [0, 2]].numpy(), 0.0, atol=1e-5)
    assert (output.joints[:, 0, 1] < -0.3).all()
    forward = R[:, :, 2, :]  # each camera's optical axis in the world
    azimuth = np.degrees(np.arctan2(forward[..., 0], forward[..., 2]))
    spacing = (np.diff(azimuth, axis=1) + 360.0) % 360.0
    jitter = ViewsConfig().azimuth_jitter
    assert (np.abs(spacing - 360.0 / VIEWS) <= 2 * jitter + 1e-3).all()
    assert (np.abs(forward[..., 1]) < np.sin(np.radians(40.0))).all()  # nearly level
    centres = -np.einsum("svji,svj->svi", R, t)
    root = output.joints[:, None, 0].numpy().astype(np.float64)
    depth = np.einsum("svi,svi->sv", root - centres, forward)
    assert ((depth > 1.0) & (depth < 10.0)).all()  # in front, at the scene's distances


def test_subjects_do_not_depend_on_num_and_an_interrupted_run_resumes_to_the_same_bytes(
        multiview, tmp_path):
    small = tmp_path / "small"
    generate_multiview_dataset(small, 2, VIEWS, seed=11, config=CONFIG, progress=False)
    for view in range(VIEWS):
        for name in ("000000", "000001"):
            for a, b in zip(sample_files(multiview / "views" / str(view), name),
                            sample_files(small / "views" / str(view), name), strict=True):
                assert a.read_bytes() == b.read_bytes(), a
    before = files(small)
    (small / "views" / "2" / "images" / "000001.png").unlink()
    (small / "gt.npz").unlink()
    generate_multiview_dataset(small, 2, VIEWS, seed=11, config=CONFIG, progress=False)
    assert files(small) == before


# --------------------------------------------------------------------------- synth --frames


def test_sequences_move_smoothly_with_one_shape_and_one_camera(sequences, body):
    gt = read_params(sequences / "gt.npz")
    with np.load(sequences / "sequences.npz") as npz:
        index = dict(npz)
    names = [f"{s:06d}_f{f:03d}" for s in range(SEQUENCES) for f in range(FRAMES)]
    assert gt["image_names"].tolist() == names == index["image_names"].tolist()
    assert index["sequence"].tolist() == [s for s in range(SEQUENCES) for _ in range(FRAMES)]
    assert index["frame"].tolist() == list(range(FRAMES)) * SEQUENCES
    betas = gt["betas"].reshape(SEQUENCES, FRAMES, -1)
    assert (betas == betas[:, :1]).all() and not np.allclose(betas[0, 0], betas[1, 0])
    focal = gt["focal_length"].reshape(SEQUENCES, FRAMES, 2)
    assert (focal == focal[:, :1]).all()
    with torch.no_grad():
        joints = body(**tensors(gt)).joints[:, :24].reshape(SEQUENCES, FRAMES, 24, 3)
    step = (joints[:, 1:] - joints[:, :-1]).norm(dim=-1).mean(dim=-1)  # (S, F - 1) m
    jitter = (joints[:, 2:] - 2 * joints[:, 1:-1] + joints[:, :-2]).norm(dim=-1).mean(dim=-1)
    assert (step.amax(dim=1) > 0.005).all()  # they move
    assert step.max() < 0.2
    # smooth: the change of velocity is small next to the velocity (independent poses per
    # frame would make it larger than the steps)
    assert (jitter.mean(dim=1) < 0.5 * step.mean(dim=1)).all()


def test_sequences_are_reproducible_and_frames_are_independent_of_the_count(sequences, tmp_path):
    again = generate_sequence_dataset(tmp_path / "again", 1, FRAMES, seed=12, config=CONFIG,
                                      progress=False)
    for frame in range(FRAMES):
        name = f"000000_f{frame:03d}"
        for a, b in zip(sample_files(sequences, name), sample_files(again, name), strict=True):
            assert a.read_bytes() == b.read_bytes(), a
    still = generate_sequence_dataset(tmp_path / "still", 1, FRAMES, seed=12,
                                      config=CONFIG, motion=MotionConfig(0.0, 0.0, 0.0),
                                      progress=False)
    gt = read_params(still / "gt.npz")
    assert np.allclose(gt["body_pose"], gt["body_pose"][:1], atol=1e-5)
    assert np.allclose(gt["transl"], gt["transl"][:1], atol=1e-6)


# --------------------------------------------------------------------------- refine


class Recorder:
    """A solver that keeps the batches it is given and hands them to SMPLify."""

    def __init__(self, solver: SMPLify) -> None:
        self.solver, self.batches = solver, []

    def solve(self, batch: FitBatch) -> FitResult:
        self.batches.append(batch)
        return self.solver.solve(batch)


def test_refine_fits_whole_subjects_with_their_views_as_rows_and_cameras(multiview, body):
    rows = open_rows(multiview)
    assert rows.batches(7) == [(0, 2), (2, 3)]  # 7 // 3 views: two subjects per batch
    fitter = Fitter("keypoints", "gmm", body, "cpu", iterations=2)
    recorder = Recorder(fitter.solver)
    fitter.solver = recorder
    part = rows.fit(fitter, 1, 3)
    batch, = recorder.batches
    assert batch.batch_size == 2 * VIEWS
    assert [(g.indices, g.shares) for g in batch.groups] == [((0, 1, 2), "all"),
                                                           ((3, 4, 5), "all")]
    with np.load(multiview / "cameras.npz") as npz:
        R = npz["R"]
    for subject in (1, 2):
        for view in range(VIEWS):
            row = (subject - 1) * VIEWS + view
            assert np.allclose(batch.camera.R[row].numpy(), R[subject, view])
            name = f"{subject:06d}"
            keypoints = read_openpose_people(
                multiview / "views" / str(view) / "keypoints" / f"{name}_keypoints.json")[0]
            assert np.allclose(batch.observations["keypoints"]["keypoints"][row].numpy(), keypoints,
                               atol=1e-4)
            init = read_params(multiview / "views" / str(view) / "init.npz")
            assert np.allclose(batch.init["transl"][row].numpy(), init["transl"][subject])
    assert part["image_names"].tolist() == ["000001", "000002"]
    assert part["body_pose"].shape == (2, 69)


def test_refine_on_a_multiview_folder_writes_one_world_row_per_subject(multiview, tmp_path):
    out = tmp_path / "out"
    assert refine(["--input", str(multiview), "--output", str(out), "--batch-size", "4",
                   "--iterations", "30", "--quiet", "--overlays", "1"]) == 0
    results = read_params(out / "results.npz")
    gt = read_params(multiview / "gt.npz")
    assert results["image_names"].tolist() == gt["image_names"].tolist()
    assert parts(out) == [(0, 1), (1, 2), (2, 3)]  # 4 // 3 views: a subject per batch
    metrics = json.loads((out / "metrics.json").read_text())
    for label in ("init", "refined"):
        assert set(metrics[label]) == {"mpjpe", "pa_mpjpe", "pve", "pa_pve"}
    assert metrics["num_images"] == SUBJECTS
    # exact keypoints from three views: the world body moves towards the world ground truth
    assert metrics["refined"]["mpjpe"] < metrics["init"]["mpjpe"]
    assert metrics["refined"]["pve"] < metrics["init"]["pve"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["000000.png"]


def test_a_subject_keeps_its_good_views_and_one_without_any_keeps_its_pooled_init(
        multiview, tmp_path, body):
    data = tmp_path / "data"
    shutil.copytree(multiview, data)
    (data / "views" / "1" / "keypoints" / "000000_keypoints.json").unlink()
    for view in range(VIEWS):
        (data / "views" / str(view) / "keypoints" / "000002_keypoints.json").unlink()
    out = tmp_path / "out"
    assert refine(["--input", str(data), "--output", str(out), *FAST]) == 0
    results = read_params(out / "results.npz")
    assert results["flag_bad_input"].tolist() == [False, False, True]
    assert results["error"][0].startswith("view 1: ") and "000000" in results["error"][0]
    assert results["error"][1] == ""
    assert results["error"][2].count("view ") == VIEWS
    pooled = open_rows(data).pooled_init(body, 2, 3)
    for key in PARAMS:
        assert np.allclose(results[key][2], pooled[key][0], atol=1e-6), key
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_valid"] == SUBJECTS - 1


def test_refine_view_k_is_refining_the_view_folder(multiview, tmp_path):
    direct, picked = tmp_path / "direct", tmp_path / "picked"
    assert refine(["--input", str(multiview / "views" / "1"), "--output", str(direct),
                   *FAST]) == 0
    assert refine(["--input", str(multiview), "--view", "1", "--output", str(picked),
                   *FAST]) == 0
    a, b = read_params(direct / "results.npz"), read_params(picked / "results.npz")
    assert a["image_names"].tolist() == [f"{i:06d}" for i in range(SUBJECTS)]
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    view = read_params(multiview / "views" / "1" / "init.npz")
    assert np.array_equal(a["focal_length"], view["focal_length"])  # view 1's camera frame


def test_refine_on_sequences_shares_the_shape_of_each_sequence(sequences, tmp_path):
    grouped, alone = tmp_path / "grouped", tmp_path / "alone"
    assert refine(["--input", str(sequences), "--output", str(grouped), "--batch-size", "10",
                   *FAST]) == 0
    assert parts(grouped) == [(0, 8), (8, 16)]  # whole sequences per batch
    results = read_params(grouped / "results.npz")
    assert results["image_names"].shape == (SEQUENCES * FRAMES,)
    betas = results["betas"].reshape(SEQUENCES, FRAMES, -1)
    assert np.allclose(betas, betas[:, :1]) and not np.allclose(betas[0, 0], betas[1, 0])
    assert "energy_temporal" in results
    settings = json.loads((grouped / "settings.json").read_text())["settings"]
    assert settings["data_term"] == "keypoints,temporal"
    assert refine(["--input", str(sequences), "--output", str(alone), "--no-groups",
                   *FAST]) == 0
    alone_betas = read_params(alone / "results.npz")["betas"].reshape(SEQUENCES, FRAMES, -1)
    assert not np.allclose(alone_betas, alone_betas[:, :1])


def test_sequence_batches_keep_sequences_whole():
    sequence = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 3])
    assert sequence_batches(sequence, 5) == [(0, 5), (5, 10), (10, 11)]
    assert sequence_batches(sequence, 3) == [(0, 3), (3, 5), (5, 10), (10, 11)]
    assert sequence_batches(sequence, 100) == [(0, 11)]


# --------------------------------------------------------------------------- bad input


def test_bad_group_input_exits_2_with_one_line(multiview, sequences, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth(["--out", str(tmp_path / "x"), "--num", "2", "--views", "0"])
    assert exit_info.value.code == 2 and "--views" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        synth(["--out", str(tmp_path / "x"), "--num", "2", "--set", "views.azimuth_jitter=5"])
    assert exit_info.value.code == 2 and "--views" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(multiview, broken)
    with np.load(broken / "cameras.npz") as npz:
        cameras = {key: npz[key] for key in npz.files if key != "t"}
    np.savez(broken / "cameras.npz", **cameras)
    out = str(tmp_path / "out")
    cases = [
        (["--input", str(broken)], ["cameras.npz", "'t'", "missing"]),
        (["--input", str(multiview), "--view", "5"], ["--view 5", "not found"]),
        (["--input", str(sequences), "--view", "0"], ["--view 0", "cameras.npz"]),
        (["--input", str(multiview), "--no-groups"], ["multi-view", "--view"]),
        (["--input", str(multiview / "views" / "0"), "--data-term", "keypoints,temporal"],
         ["temporal", "sequences.npz"]),
    ]
    for args, words in cases:
        assert refine([*args, "--output", out, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert all(word in err for word in words), err

    shuffled = tmp_path / "shuffled"
    shutil.copytree(sequences, shuffled)
    with np.load(shuffled / "sequences.npz") as npz:
        index = dict(npz)
    index["sequence"] = np.array([0, 1] * FRAMES)
    np.savez(shuffled / "sequences.npz", **index)
    assert refine(["--input", str(shuffled), "--output", out, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sequences.npz" in err and "consecutive" in err
