"""SPIN training (issue 14): the fits dictionary (augmentation handling, update rule, file) and
``python -m fitkit.train spin`` (kill -9 and resume, two gloo ranks, ``--static``, bad input),
on a tiny folder that ``python -m fitkit.synth`` writes."""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fitkit.body import load_body
from fitkit.geometry import Camera, crop_images
from fitkit.io.keypoint_formats import KEYPOINT_FORMATS
from fitkit.io.params import ParamsFileError, read_params
from fitkit.nets import load_network
from fitkit.synth.__main__ import main as synth_main
from fitkit.train.__main__ import main as train_main
from fitkit.train.fits import (
    BETAS_LIMIT,
    SMPL_FLIP_PERMUTATION,
    FitsDictionary,
    augment_pose,
    flip_pose,
    in_plane_rotation,
    rotate_crop_points,
    rotate_global_orient,
    unaugment_pose,
)
from fitkit.train.spin import augmented_crops, crop_keypoints, keypoint_flip_permutation

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
RUN = ["--steps", "4", "--batch-size", "4", "--chunk", "2", "--fit-iterations", "5",
       "--initial-iterations", "10", "--checkpoint-every", "2", "--log-every", "2",
       "--image-size", "32", "--val-every", "0", "--quiet"]
"""A tiny run: 4 steps of 4 draws in two chunks of 2 (one per rank with two ranks)."""


@pytest.fixture(scope="module")
def body():
    return load_body("open")


def _pose(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, generator=generator),
            0.3 * torch.randn(batch, 69, generator=generator))


def _joints(body, orient, pose):
    return body(global_orient=orient, body_pose=pose,
                vertex_ids=torch.zeros(0, dtype=torch.long)).joints


def test_mirroring_is_its_own_exact_inverse_and_mirrors_the_body(body):
    orient, pose = _pose(5)
    mirrored = flip_pose(orient, pose)
    back = flip_pose(*mirrored)
    assert torch.equal(back[0], orient) and torch.equal(back[1], pose)
    # the mirrored parameters pose the mirror image of the body (x -> -x, left <-> right)
    joints = _joints(body, orient, pose)
    expected = joints[:, list(SMPL_FLIP_PERMUTATION)] * torch.tensor([-1.0, 1.0, 1.0])
    assert (_joints(body, *mirrored) - expected).norm(dim=-1).max() < 1e-3
    # only the flagged samples are mirrored
    some = flip_pose(orient, pose, torch.tensor([True, False, True, False, False]))
    assert torch.equal(some[0][1], orient[1]) and torch.equal(some[0][0], mirrored[0][0])


def test_rotation_turns_the_image_as_the_crop_does_and_round_trips(body):
    orient, pose = _pose(4, seed=1)
    angle = torch.tensor([0.0, 30.0, -45.0, 90.0])
    turned = rotate_global_orient(orient, angle)
    assert torch.equal(turned[0], orient[0])  # no rotation: untouched, bit for bit
    # the body turned about the optical axis projects where the crop's rotation moves it
    joints = _joints(body, orient, pose)
    root = joints[:, :1]  # the root joint does not move with the orientation
    shift = torch.tensor([0.1, -0.2, 5.0])
    turned_shift = (shift @ in_plane_rotation(angle).mT)[:, None]
    points = joints - root + shift
    turned_points = _joints(body, turned, pose) - root + turned_shift
    project = lambda points: points[..., :2] / points[..., 2:]  # noqa: E731
    assert torch.allclose(project(turned_points), rotate_crop_points(project(points), angle),
                          atol=1e-5)
    # 90 degrees counter-clockwise on the screen (y down): right goes up
    assert torch.allclose(rotate_crop_points(torch.tensor([[[1.0, 0.0]]]), angle[3:]),
                          torch.tensor([[[0.0, -1.0]]]), atol=1e-6)
    flip = torch.tensor([False, True, False, True])
    augmented = augment_pose(orient, pose, angle, flip)
    restored = unaugment_pose(*augmented, angle, flip)
    assert torch.allclose(restored[0], orient, atol=1e-5)
    assert torch.equal(restored[1], pose)


def test_augmented_crops_and_keypoints_land_on_the_same_pixels():
    image = torch.zeros(3, 60, 80)
    spot = torch.tensor([50.0, 20.0])  # (u, v)
    image[:, 19:22, 49:52] = 1.0
    center, size = torch.tensor([[40.0, 30.0]]), torch.tensor([48.0])
    for angle, flip in ((0.0, False), (35.0, False), (-70.0, True), (0.0, True)):
        angle_t, flip_t = torch.tensor([angle]), torch.tensor([flip])
        crop = augmented_crops([image], center, size, 48, angle_t, flip_t)[0, 0]
        keypoint = torch.cat([spot, torch.ones(1)])[None, None]
        where = crop_keypoints(keypoint, center, size, angle_t, flip_t, [0])[0, 0, :2]
        pixel = (where + 1.0) * 48 / 2.0 - 0.5
        row, column = divmod(int(crop.argmax()), 48)
        assert abs(column - float(pixel[0])) <= 1.0 and abs(row - float(pixel[1])) <= 1.0
    plain = augmented_crops([image], center, size, 48, torch.zeros(1), torch.zeros(1, dtype=bool))
    assert torch.allclose(plain, crop_images(image[None], center, size, 48), atol=1e-6)


def test_mirrored_keypoints_swap_sides():
    fmt = KEYPOINT_FORMATS["body25"]
    permutation = keypoint_flip_permutation(fmt)
    assert fmt.names[permutation[fmt.index("LShoulder")]] == "RShoulder"
    assert fmt.names[permutation[fmt.index("Nose")]] == "Nose"
    coco = KEYPOINT_FORMATS["coco17"]
    assert coco.names[keypoint_flip_permutation(coco)[coco.index("left_eye")]] == "right_eye"


def _dictionary(rows: int = 3) -> FitsDictionary:
    params = {"global_orient": torch.zeros(rows, 3), "body_pose": torch.zeros(rows, 69),
              "betas": torch.zeros(rows, 10), "transl": torch.tensor([[0.0, 0.0, 5.0]] * rows),
              "focal_length": torch.full((rows, 2), 90.0),
              "camera_center": torch.full((rows, 2), 31.5)}
    return FitsDictionary([f"{i:06d}" for i in range(rows)], params,
                          torch.tensor([50.0, 50.0, 50.0])[:rows])


def _fits(value: float, count: int) -> dict[str, torch.Tensor]:
    return {"global_orient": torch.full((count, 3), value), "body_pose": torch.full((count, 69),
            value), "betas": torch.full((count, 10), value), "transl": torch.full((count, 3),
                                                                                  value)}


def test_update_keeps_the_better_fit():
    fits = _dictionary()
    new = _fits(1.0, 4)
    new["betas"][3] = 2.0
    stored = fits.update([0, 1, 2, 0], new, torch.tensor([40.0, 60.0, math.nan, 30.0]),
                         rescored=torch.tensor([45.0, 55.0, 50.0, 45.0]))
    assert stored.tolist() == [True, False, False, True]
    assert fits.keypoint_loss.tolist() == [30.0, 55.0, 50.0]  # row 1 took its re-score
    assert float(fits.params["betas"][0, 0]) == 2.0  # the better of the two new fits of row 0
    assert torch.equal(fits.params["body_pose"][1:], torch.zeros(2, 69))  # worse, NaN: kept
    assert fits.updates.tolist() == [2, 0, 0]
    worse = fits.update([0], _fits(3.0, 1), torch.tensor([31.0]))
    assert not worse.any() and float(fits.params["betas"][0, 0]) == 2.0


def test_targets_reset_extreme_betas_and_mark_valid_fits():
    fits = _dictionary()
    fits.params["betas"][1, 4] = BETAS_LIMIT + 0.5
    fits.params["betas"][2, 0] = BETAS_LIMIT - 0.5
    fits.keypoint_loss[:] = torch.tensor([99.0, 100.0, 5.0])
    targets = fits.targets([0, 1, 2], torch.zeros(3), torch.zeros(3, dtype=torch.bool))
    assert targets["valid"].tolist() == [True, False, True]
    assert torch.equal(targets["betas"][1], torch.zeros(10))
    assert float(targets["betas"][2, 0]) == BETAS_LIMIT - 0.5
    assert torch.equal(fits.params["betas"][1, 4], torch.tensor(BETAS_LIMIT + 0.5))  # stored


def test_dictionary_file_is_a_parameter_file_and_reads_back_exactly(tmp_path):
    fits = _dictionary()
    fits.update([1], _fits(0.5, 1), torch.tensor([10.0]))
    fits.keypoint_loss[2] = torch.inf  # an image without usable keypoints
    path = fits.write(tmp_path / "fits.npz")
    back = FitsDictionary.read(path)
    assert back.names == fits.names and torch.equal(back.keypoint_loss, fits.keypoint_loss)
    assert all(torch.equal(back.params[k], fits.params[k]) for k in fits.params)
    assert back.updates.tolist() == [0, 1, 0] and back.valid.tolist() == [True, True, False]
    assert read_params(path)["valid"].tolist() == [True, True, False]
    fits.write(tmp_path / "again.npz")
    assert (tmp_path / "again.npz").read_bytes() == path.read_bytes()
    arrays = dict(np.load(path))
    arrays["keypoint_loss"][1] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ParamsFileError, match="keypoint_loss.*row 1"):
        FitsDictionary.read(tmp_path / "bad.npz")


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Eight 64-pixel synthetic photos with detector-like keypoints."""
    root = tmp_path_factory.mktemp("spin") / "data"
    assert synth_main(["--out", str(root), "--num", "8", "--seed", "3", "--size", "64",
                       "--quiet"]) == 0
    return root


def _command(data, out, *extra) -> list[str]:
    return ["spin", "--data", str(data), "--out", str(out), *RUN, *extra]


def _spin(data, out, *extra, env=None):
    """The run as a process of its own (one thread, as :func:`_train` runs)."""
    return subprocess.Popen([sys.executable, "-m", "fitkit.train", *_command(data, out, *extra)],
                            env={**ENV, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]


def _train(data, out, *extra) -> None:
    """The run in this process, on one thread (no interpreter start-up to wait for)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_main(_command(data, out, *extra)) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run of :data:`RUN`."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _train(data, out)
    return out


def _model(path):
    return torch.load(path / "checkpoint.pt", weights_only=True)["model"]


def test_killed_run_resumes_to_the_uninterrupted_dictionary_and_model(data, reference,
                                                                     tmp_path):
    out = tmp_path / "run"
    process = _spin(data, out)
    while not (out / "fits.npz").is_file():  # the first checkpoint (step 2) is written
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()  # SIGKILL: no handler runs
    process.wait()
    _train(data, out, "--resume")
    assert (out / "fits.npz").read_bytes() == (reference / "fits.npz").read_bytes()
    resumed, whole = _model(out), _model(reference)
    assert resumed.keys() == whole.keys()
    assert all(torch.equal(resumed[key], whole[key]) for key in whole)
    # the run replaced fits, each by a better one; the other rows kept theirs bit for bit
    initial = FitsDictionary.read(reference / "fits_initial.npz")
    final = FitsDictionary.read(out / "fits.npz")
    replaced = final.updates > 0
    assert replaced.any()
    assert (final.keypoint_loss[replaced] < initial.keypoint_loss[replaced]).all()
    for key, value in final.params.items():
        assert torch.equal(value[~replaced], initial.params[key][~replaced])


def test_two_gloo_ranks_write_the_dictionary_of_one_rank(data, reference, tmp_path):
    with socket.socket() as probe:  # a free port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [_spin(data, tmp_path / "ranks", env={
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
        "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(2)]  # what torchrun sets
    for process in ranks:
        _finish(process)
    assert (tmp_path / "ranks" / "fits.npz").read_bytes() == \
        (reference / "fits.npz").read_bytes()


def test_static_training_never_changes_the_dictionary(data, reference, tmp_path, capsys):
    out = tmp_path / "static"
    _train(data, out, "--static", "--image-only")
    assert (out / "fits.npz").read_bytes() == (out / "fits_initial.npz").read_bytes()
    # the network reads the folder's keypoints by default, the crop alone with --image-only
    assert load_network(reference / "regressor.pt").config.keypoint_format == "body25"
    assert load_network(out / "regressor.pt").config.keypoint_format == ""
    capsys.readouterr()
    assert train_main(_command(data, reference, "--resume", "--image-only")) == 2
    assert "keypoint_input" in capsys.readouterr().err  # the other choice is refused, named
    assert (out / "fits_initial.npz").read_bytes() == \
        (reference / "fits_initial.npz").read_bytes()
    assert not torch.equal(_model(out)["decpose.weight"], _model(reference)["decpose.weight"])


def test_bad_input_exits_2_with_one_line(data, tmp_path, capsys):
    code = train_main(["spin", "--data", str(tmp_path / "missing"), "--out",
                       str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing" in err
    bare = tmp_path / "bare"
    shutil.copytree(data / "images", bare / "images")
    code = train_main(["spin", "--data", str(bare), "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "keypoints" in err
    assert not (tmp_path / "b").exists()


def test_camera_of_the_folder_is_its_init_npz(data):
    from fitkit.train.spin import KeypointFolder

    folder = KeypointFolder(data)
    init = read_params(data / "init.npz")
    assert folder.camera_source == "init.npz"
    assert torch.equal(folder.camera.focal_length, torch.from_numpy(init["focal_length"]))
    assert isinstance(folder.cameras([1, 2]), Camera) and folder.keypoints.shape == (8, 25, 3)


def test_validation_reports_errors_and_leaves_the_network_training(data, tmp_path):
    from fitkit.nets.regressor import Regressor, RegressorConfig
    from fitkit.train.spin import Ranks, SpinSettings, SpinTrainer

    trainer = SpinTrainer(data, tmp_path / "out", SpinSettings(batch_size=2), None, 1, "cpu",
                          False, 1, str(data), 1, 3, "open", "gmm", False, Ranks())
    gt = trainer.folder.gt
    fits = FitsDictionary(trainer.folder.names, {k: torch.from_numpy(v) for k, v in gt.items()},
                          torch.zeros(len(trainer.folder)))
    net = Regressor(RegressorConfig(image_size=32)).train()
    entry = trainer.report(net, fits)
    assert net.training
    assert entry["dictionary_pa_mpjpe"] < 1.0  # the true bodies: no error
    assert entry["val_mpjpe"] > 10.0 and math.isfinite(entry["val_pa_mpjpe"])


def test_the_network_reads_the_augmented_crops_keypoints(data, tmp_path):
    from fitkit.nets.regressor import Regressor, RegressorConfig
    from fitkit.train.spin import Ranks, SpinAugment, SpinSettings, SpinTrainer

    settings = SpinSettings(batch_size=4, static=True,
                            augment=SpinAugment(rotation_probability=1.0))
    trainer = SpinTrainer(data, tmp_path / "out", settings, None, 1, "cpu", False, 1, None,
                          0, 0, "open", "gmm", False, Ranks())
    gt = trainer.folder.gt
    fits = FitsDictionary(trainer.folder.names, {k: torch.from_numpy(v) for k, v in gt.items()},
                          torch.zeros(len(trainer.folder)))
    net = Regressor(RegressorConfig(image_size=32, keypoint_format="body25"))
    seen = []

    def model(crops, keypoints):
        seen.append(keypoints)
        return net(crops, keypoints)

    draws = [0, 1, 2, 3]
    trainer.chunk(draws, model, net, fits)
    rows = trainer.folder.rows(settings.seed, draws)
    scale, angle, flip = settings.augment.draw(settings.seed, draws)
    assert flip.any() and (angle != 0).any()  # the draws are augmented
    center, size = trainer.folder.boxes(rows)
    expected = crop_keypoints(trainer.folder.keypoints[torch.as_tensor(rows)], center,
                              size * scale, angle, flip, trainer.permutation)
    torch.testing.assert_close(seen[0], expected)
