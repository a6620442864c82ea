"""fitkit.fit: one call from arrays or files, recovery from exact keypoints, clear input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fitkit
from fitkit.api import FitInputError, fit_config
from fitkit.eval import mpjpe
from fitkit.fitting import preset
from fitkit.io import read_params
from fitkit.synth import SynthConfig, generate_dataset

NUM = 4
ITERATIONS = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 128 x 128 synthetic images with exact keypoints."""
    root = tmp_path_factory.mktemp("api") / "data"
    config = SynthConfig(size=128, keypoint_noise="none")
    return generate_dataset(root, NUM, seed=0, config=config, progress=False)


def files(root: Path, folder: str, suffix: str) -> list[Path]:
    return [root / folder / f"{i:06d}{suffix}" for i in range(NUM)]


def joints(params: dict) -> torch.Tensor:
    body = fitkit.load_body("open")
    keys = ("global_orient", "body_pose", "betas", "transl")
    with torch.no_grad():
        return body(**{k: torch.as_tensor(np.asarray(params[k])) for k in keys}).joints


def test_fit_from_files_recovers_the_body_better_than_init(dataset: Path) -> None:
    result = fitkit.fit(
        files(dataset, "images", ".png"),
        init=dataset / "init.npz",
        keypoints=files(dataset, "keypoints", "_keypoints.json"),
        iterations=ITERATIONS,
    )
    gt, init = read_params(dataset / "gt.npz"), read_params(dataset / "init.npz")
    before = mpjpe(joints(init), joints(gt))
    after = mpjpe(result.joints, joints(gt))
    assert after.mean() < 0.75 * before.mean()
    assert set(result.params) == {"global_orient", "body_pose", "betas", "transl",
                                  "focal_length", "camera_center"}
    assert result.params["body_pose"].shape == (NUM, 69)
    assert result.vertices.shape == (NUM, 7000, 3) and result.energy.shape == (NUM,)
    assert set(result.terms) >= {"keypoints", "pose_prior"}
    assert not result.ok.logical_not().any()
    # the camera comes from the init file: the dataset's true focal length
    assert torch.allclose(result.params["focal_length"], torch.as_tensor(init["focal_length"]))
    assert result.timings["total"] > 0


def test_fit_from_arrays_and_chained_results(dataset: Path) -> None:
    from PIL import Image

    images = np.stack([np.asarray(Image.open(p)) for p in files(dataset, "images", ".png")])
    keypoints = np.stack([
        np.array(json.loads(p.read_text())["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
        for p in files(dataset, "keypoints", "_keypoints.json")
    ])
    init = {k: torch.as_tensor(v) for k, v in read_params(dataset / "init.npz").items()
            if k != "image_names"}
    first = fitkit.fit(images, init=init, keypoints=torch.as_tensor(keypoints), iterations=5)
    again = fitkit.fit(images.astype(np.float32) / 255, init=first, keypoints=keypoints,
                       iterations=5, prior="vposer", optimizer="lbfgs", lr=1.0)
    assert again.params["body_pose"].shape == (NUM, 69)
    assert torch.isfinite(again.energy).all()


def test_an_empty_openpose_file_flags_its_sample_and_keeps_it_at_init(
    dataset: Path, tmp_path: Path
) -> None:
    keypoints = files(dataset, "keypoints", "_keypoints.json")
    empty = tmp_path / "empty_keypoints.json"
    empty.write_text(json.dumps({"version": 1.3, "people": []}))
    result = fitkit.fit(files(dataset, "images", ".png"), init=dataset / "init.npz",
                        keypoints=[empty, *keypoints[1:]], iterations=3)
    init = read_params(dataset / "init.npz")
    assert result.flags["no_data"].tolist() == [True, False, False, False]
    assert np.allclose(result.params["body_pose"][0].numpy(), init["body_pose"][0])


def test_bad_inputs_give_clear_errors(dataset: Path) -> None:
    images = files(dataset, "images", ".png")
    keypoints = files(dataset, "keypoints", "_keypoints.json")
    init = dataset / "init.npz"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        fitkit.fit([*images[:3], dataset / "images" / "nope.png"], init=init, keypoints=keypoints)
    with pytest.raises(FileNotFoundError, match="missing_keypoints.json"):
        missing = [*keypoints[:3], dataset / "missing_keypoints.json"]
        fitkit.fit(images, init=init, keypoints=missing)
    with pytest.raises(FitInputError, match=r"images 4, keypoints 3"):
        fitkit.fit(images, init=init, keypoints=keypoints[:3])
    with pytest.raises(FitInputError, match=r"\(B, 25, 3\).*\(4, 18, 3\)"):
        fitkit.fit(images, init=init, keypoints=np.zeros((4, 18, 3)))
    with pytest.raises(FitInputError, match="unknown data term .sift.*densepose.*flow.*keypoints"):
        fitkit.fit(images, init=init, data_term="sift", keypoints=keypoints)
    with pytest.raises(FitInputError, match="unknown prior 'gauss'.*cnf, gmm, vposer"):
        fitkit.fit(images, init=init, prior="gauss", keypoints=keypoints)
    with pytest.raises(FitInputError, match=r"data_term='densepose' needs iuv=\.\.\."):
        fitkit.fit(images, init=init, data_term="densepose", keypoints=keypoints)
    with pytest.raises(FitInputError, match="unknown fit setting.*iteration"):
        fitkit.fit(images, init=init, keypoints=keypoints, iteration=5)


def test_config_overrides_apply_to_every_stage_or_per_stage() -> None:
    config = fit_config("refine", iterations=7, pose_prior_weight=[0.0, 2.0],
                        term_weights={"keypoints": 2.0})
    assert [stage.iterations for stage in config.stages] == [7, 7]
    assert [stage.pose_prior_weight for stage in config.stages] == [0.0, 2.0]
    assert config.term_weights == {**preset("refine").term_weights, "keypoints": 2.0}
    with pytest.raises(FitInputError, match="one value per stage"):
        fit_config("refine", lr=[0.1, 0.2, 0.3])
    with pytest.raises(FitInputError, match="unknown preset 'fast'.*refine, scratch, spin"):
        fit_config("fast")
