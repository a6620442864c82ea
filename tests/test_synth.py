"""Behaviour of fitkit.synth: dataset layout, exact annotations, determinism, resume, CLI errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fitkit.body import load_body
from fitkit.geometry import Camera
from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.io import read_openpose_people, read_params
from fitkit.render import rasterize
from fitkit.synth.__main__ import main
from fitkit.synth.config import SynthConfig, parse_override, update_config
from fitkit.synth.dataset import BATCH_SIZE, generate_dataset, sample_files, sample_name
from fitkit.synth.init import InitNoise, kinematic_levels, perturb_body, perturb_transl
from fitkit.synth.textures import uv_face_map
from fitkit.synth.world import sample_generator

SIZE = 128
NUM = BATCH_SIZE - 1  # one batch (its last row is padding)
SEED = 7
CONFIG = SynthConfig(size=SIZE, keypoint_noise="none", texture_size=128)


def all_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def body():
    return load_body("open")


@pytest.fixture(scope="module")
def exact(tmp_path_factory) -> Path:
    """A small dataset with exact keypoints."""
    out = tmp_path_factory.mktemp("synth") / "exact"
    return generate_dataset(out, NUM, SEED, CONFIG, progress=False)


def test_layout_and_parameter_files(exact):
    names = [sample_name(i) for i in range(NUM)]
    for name in names:
        assert all(path.is_file() for path in sample_files(exact, name))
        with Image.open(exact / "images" / f"{name}.png") as image:
            assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    for file in ("gt.npz", "init.npz"):
        params = read_params(exact / file)
        assert params["image_names"].tolist() == names
        assert params["body_pose"].shape == (NUM, 69) and params["body_pose"].dtype == np.float32
    meta = json.loads((exact / "meta.json").read_text())
    assert meta["seed"] == SEED and meta["num"] == NUM and meta["size"] == SIZE
    assert meta["keypoint_noise"] == "none"
    assert [s["name"] for s in meta["samples"]] == names
    gt = read_params(exact / "gt.npz")
    assert np.abs(gt["betas"]).max() <= 3.0
    distance = np.array([s["distance"] for s in meta["samples"]])
    assert ((distance >= 2.0) & (distance <= 8.0)).all()


def test_exact_keypoints_are_projections_of_the_ground_truth(exact, body):
    gt = read_params(exact / "gt.npz")
    params = {k: torch.from_numpy(gt[k]) for k in ("global_orient", "body_pose", "betas", "transl")}
    camera = Camera(torch.from_numpy(gt["focal_length"]), torch.from_numpy(gt["camera_center"]),
                    torch.full((NUM, 2), float(SIZE)))
    with torch.no_grad():
        projected = camera.project(body(**params).keypoints("openpose25")).numpy()
    confident = 0
    for row, name in enumerate(gt["image_names"]):
        keypoints = read_openpose_people(exact / "keypoints" / f"{name}_keypoints.json")[0]
        seen = keypoints[:, 2] > 0
        confident += seen.sum()
        assert np.abs(keypoints[seen, :2] - projected[row, seen]).max() < 0.5
        inside = ((projected[row] >= 0) & (projected[row] <= SIZE - 1)).all(-1)
        np.testing.assert_array_equal(seen, inside)  # exact mode drops only out-of-frame points
    assert confident > 0.8 * 25 * NUM


def test_iuv_matches_the_visible_body_surface(exact, body):
    """Every IUV pixel lies on the body, its part I is a part of the visible triangle, and the
    vertex of part I nearest to its (U, V) lies close to the visible surface point."""
    gt = read_params(exact / "gt.npz")
    params = {k: torch.from_numpy(gt[k]) for k in ("global_orient", "body_pose", "betas", "transl")}
    camera = Camera(torch.from_numpy(gt["focal_length"]), torch.from_numpy(gt["camera_center"]),
                    torch.full((NUM, 2), float(SIZE)))
    with torch.no_grad():
        vertices = body(**params).vertices
        fragments = rasterize(vertices, body.faces, camera, (SIZE, SIZE))
    dp_I, dp_UV = body.dp_I.long(), torch.stack([body.dp_U, body.dp_V], -1).float()
    close = total = 0
    for row, name in enumerate(gt["image_names"]):
        # DensePose's files hold (I, U, V) in the B, G, R channels (cv2.imwrite of an IUV array).
        v, u, part = torch.from_numpy(np.array(Image.open(exact / "densepose" / f"{name}_IUV.png"))
                                      .astype(np.int64)).unbind(-1)
        mask = fragments.face_id[row] >= 0
        torch.testing.assert_close(part > 0, mask)
        ys, xs = mask.nonzero(as_tuple=True)
        ys, xs = ys[::3], xs[::3]
        corners = body.faces[fragments.face_id[row, ys, xs]]  # (P, 3)
        assert (dp_I[corners] == part[ys, xs, None]).any(-1).all()
        surface = (fragments.bary[row, ys, xs, :, None] * vertices[row, corners]).sum(1)
        uv = torch.stack([u[ys, xs], v[ys, xs]], -1).float() / 255.0
        same_part = dp_I[None, :] == part[ys, xs, None]  # (P, V)
        uv_distance = torch.cdist(uv, dp_UV).masked_fill(~same_part, math.inf)
        nearest = vertices[row, uv_distance.argmin(1)]
        close += ((nearest - surface).norm(dim=-1) < 0.05).sum().item()
        total += len(ys)
    assert total > 0 and close > 0.95 * total


def test_same_seed_gives_identical_files(exact, tmp_path):
    again = generate_dataset(tmp_path / "again", NUM, SEED, CONFIG, progress=False)
    assert all_files(again) == all_files(exact)
    images = [all_files(exact)[f"images/{sample_name(i)}.png"] for i in range(NUM)]
    assert len(set(images)) == NUM


def test_samples_draw_from_independent_streams_of_seed_and_index():
    draws = {(seed, index): torch.rand(4, generator=sample_generator(seed, index))
             for seed in (0, 1) for index in (0, 1)}
    assert len({tuple(d.tolist()) for d in draws.values()}) == 4
    torch.testing.assert_close(torch.rand(4, generator=sample_generator(1, 0)), draws[1, 0])


def test_resume_regenerates_identical_files_and_keeps_finished_ones(exact, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exact, copy)
    first, second, third = (sample_files(copy, sample_name(i)) for i in range(NUM))
    # keypoints, IUV and texture of sample 1; image and record of sample 2; the final files
    for path in (*second[1:4], third[0], third[4], copy / "gt.npz", copy / "init.npz",
                 copy / "meta.json"):
        path.unlink()
    kept = first[0]  # sample 0 is complete: not rewritten, though its batch is rendered again
    stamp = kept.stat().st_mtime_ns
    generate_dataset(copy, NUM, SEED, CONFIG, progress=False)
    assert all_files(copy) == all_files(exact)
    assert kept.stat().st_mtime_ns == stamp


def test_detector_keypoints_are_noisy_versions_of_exact_ones(exact, tmp_path):
    config = update_config(CONFIG, {"keypoint_noise": "detector"})
    noisy = generate_dataset(tmp_path / "noisy", 2, SEED, config, progress=False)
    errors, dropped = [], 0
    for index in range(2):
        name = sample_name(index)
        # Only the keypoints change with the noise mode.
        assert (noisy / "images" / f"{name}.png").read_bytes() == \
            (exact / "images" / f"{name}.png").read_bytes()
        clean = read_openpose_people(exact / "keypoints" / f"{name}_keypoints.json")[0]
        rough = read_openpose_people(noisy / "keypoints" / f"{name}_keypoints.json")[0]
        kept = rough[:, 2] > 0
        assert (rough[~kept] == 0).all() and (rough[kept, 2] < 1).all()
        dropped += (~kept & (clean[:, 2] > 0)).sum()
        errors.append(np.linalg.norm(rough[kept, :2] - clean[kept, :2], axis=-1))
    errors = np.concatenate(errors)
    assert 0 < np.median(errors) < 0.05 * SIZE
    assert dropped < 25


def test_init_keeps_the_root_in_place_and_errors_grow_along_the_chain():
    generator = torch.Generator().manual_seed(0)
    batch = 2000
    noise = {"body_pose": torch.randn(batch, 23, 3, generator=generator),
             "global_orient": torch.randn(batch, 3, generator=generator),
             "betas": torch.randn(batch, 10, generator=generator),
             "depth": torch.randn(batch, 1, generator=generator),
             "shift": torch.zeros(batch, 2)}
    zeros = torch.zeros(batch, 69)
    _, pose, _ = perturb_body(torch.zeros(batch, 3), zeros, torch.zeros(batch, 10), noise,
                              InitNoise())
    angle = pose.view(batch, 23, 3).norm(dim=-1).mean(0)  # (23,)
    levels = kinematic_levels()
    assert angle[levels == 7].min() > 2 * angle[levels == 1].max()  # wrists vs hips, spine1
    root = torch.tensor([[0.0, -0.2, 0.0]]).expand(batch, 3)
    transl = torch.tensor([[0.3, 0.1, 4.0]]).expand(batch, 3)
    init = perturb_transl(transl, root, root, torch.full((batch,), 362.0),
                          torch.full((batch,), 200.0), noise, InitNoise())
    before, after = root + transl, root + init
    torch.testing.assert_close(after[:, :2] / after[:, 2:], before[:, :2] / before[:, 2:])
    assert 0.05 < (after[:, 2] / before[:, 2]).log().std() < 0.15
    turned = axis_angle_to_matrix(perturb_body(
        torch.zeros(batch, 3), zeros, torch.zeros(batch, 10), noise, InitNoise())[0])
    assert (turned - torch.eye(3)).abs().max() > 0


def test_uv_face_map_fills_triangles_without_gaps():
    vt = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    ft = torch.tensor([[0, 1, 2], [0, 2, 3]])
    face_map = uv_face_map(vt, ft, 32)
    assert (face_map >= 0).all()
    assert (face_map[-1, -1] == 0) and (face_map[0, 0] == 1)  # bottom right / top left texel


def test_config_overrides():
    config = update_config(SynthConfig(), parse_override("scene.distance=[2,6]"))
    config = update_config(config, {"init": {"depth": 0.2}})
    assert config.scene.distance == (2.0, 6.0) and config.init.depth == 0.2
    for bad in ({"scene": {"nope": 1}}, {"init": {"depth": "deep"}}, {"size": 8}):
        with pytest.raises(ValueError):
            update_config(SynthConfig(), bad)


@pytest.mark.parametrize("argv, message", [
    (["--num", "0"], "--num"),
    (["--num", "2", "--size", "16"], "--size"),
    (["--num", "2", "--keypoint-noise", "perfect"], "--keypoint-noise"),
    (["--num", "2", "--set", "scene.far=9"], "scene.far"),
])
def test_bad_arguments_are_argparse_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unwritable_folder_and_clashing_settings_are_reported(exact, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # a folder the machine cannot write is a failure of the machine, not of the input: exit 1
    assert main(["--out", str(blocker / "data"), "--num", "1", "--quiet"]) == 1
    assert str(blocker / "data") in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(exact, copy)
    argv = ["--out", str(copy), "--num", "1", "--size", str(SIZE), "--seed", str(SEED + 1),
            "--keypoint-noise", "none", "--set", "texture_size=128", "--quiet"]
    assert main(argv) == 2
    assert "seed" in capsys.readouterr().err
    missing = tmp_path / "no_body.npz"
    assert main(["--out", str(tmp_path / "x"), "--num", "1", "--body", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
