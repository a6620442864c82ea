"""Behaviour of fitkit.io: OpenPose JSON files and parameter .npz files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fitkit.io import (
    NoPersonError,
    OpenPoseError,
    ParamsFileError,
    read_openpose,
    read_openpose_people,
    read_params,
    write_openpose,
    write_params,
)


def person(center: tuple[float, float], size: float, seed: int = 0) -> np.ndarray:
    """(25, 3) keypoints spread over a square of side ``size`` around ``center``."""
    rng = np.random.default_rng(seed)
    uv = np.asarray(center) + (rng.random((25, 2)) - 0.5) * size
    uv[0] = np.asarray(center) - size / 2  # pin the box corners
    uv[1] = np.asarray(center) + size / 2
    return np.concatenate([uv, rng.uniform(0.5, 1.0, (25, 1))], axis=1).astype(np.float32)


def write_json(path, content) -> None:
    path.write_text(json.dumps(content))


def test_openpose_round_trip_one_and_two_people(tmp_path):
    small, large = person((100, 100), 50, seed=1), person((300, 200), 200, seed=2)
    write_openpose(tmp_path / "one_keypoints.json", small)
    np.testing.assert_array_equal(read_openpose(tmp_path / "one_keypoints.json"), small)
    path = tmp_path / "sub" / "two_keypoints.json"
    write_openpose(path, np.stack([small, large]))
    people = read_openpose_people(path)
    assert people.shape == (2, 25, 3) and people.dtype == np.float32
    np.testing.assert_array_equal(people[1], large)
    content = json.loads(path.read_text())
    assert len(content["people"][0]["pose_keypoints_2d"]) == 75


def test_openpose_selects_by_index_box_or_size(tmp_path):
    small, large = person((100, 100), 50, seed=1), person((300, 200), 200, seed=2)
    path = tmp_path / "two_keypoints.json"
    write_openpose(path, np.stack([small, large]))
    np.testing.assert_array_equal(read_openpose(path), large)  # largest person by default
    np.testing.assert_array_equal(read_openpose(path, person=0), small)
    np.testing.assert_array_equal(read_openpose(path, person=-1), large)
    np.testing.assert_array_equal(read_openpose(path, box=(70, 70, 130, 130)), small)
    np.testing.assert_array_equal(read_openpose(path, box=(150, 50, 450, 350)), large)
    with pytest.raises(NoPersonError, match="two_keypoints.json.*box"):
        read_openpose(path, box=(900, 900, 950, 950))
    with pytest.raises(OpenPoseError, match="two_keypoints.json: field 'people'.*person 2"):
        read_openpose(path, person=2)
    with pytest.raises(ValueError, match="not both"):
        read_openpose(path, person=0, box=(0, 0, 1, 1))


def test_openpose_without_people_is_a_catchable_error(tmp_path):
    path = tmp_path / "empty_keypoints.json"
    write_json(path, {"version": 1.3, "people": []})
    assert read_openpose_people(path).shape == (0, 25, 3)
    with pytest.raises(NoPersonError, match="empty_keypoints.json"):
        read_openpose(path)
    assert issubclass(NoPersonError, OpenPoseError) and issubclass(OpenPoseError, ValueError)


def test_openpose_nan_keypoints_count_as_missing(tmp_path):
    keypoints = person((100, 100), 50)
    values = keypoints.ravel().tolist()
    values[3 * 4] = float("nan")  # x of RWrist
    path = tmp_path / "nan_keypoints.json"
    path.write_text(json.dumps({"people": [{"pose_keypoints_2d": values}]}))  # writes NaN
    result = read_openpose(path)
    assert np.isfinite(result).all()
    np.testing.assert_array_equal(result[4], [0, 0, 0])
    np.testing.assert_array_equal(result[5], keypoints[5])
    keypoints[7, 1] = np.inf
    write_openpose(tmp_path / "out_keypoints.json", keypoints)
    json.loads((tmp_path / "out_keypoints.json").read_text(), parse_constant=pytest.fail)
    np.testing.assert_array_equal(read_openpose(tmp_path / "out_keypoints.json")[7], [0, 0, 0])


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", None),
        (json.dumps({"version": 1.3}), "people"),
        (json.dumps({"people": {"pose_keypoints_2d": []}}), "people"),
        (json.dumps({"people": [{"face_keypoints_2d": []}]}), "people[0].pose_keypoints_2d"),
        (
            json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 54}]}),
            "people[0].pose_keypoints_2d",
        ),
        (
            json.dumps({"people": [{"pose_keypoints_2d": ["1"] * 75}]}),
            "people[0].pose_keypoints_2d",
        ),
        (
            json.dumps({"people": [{"pose_keypoints_2d": [True] * 75}]}),
            "people[0].pose_keypoints_2d",
        ),
    ],
)
def test_malformed_openpose_files_name_file_and_field(tmp_path, text, field):
    path = tmp_path / "bad_keypoints.json"
    path.write_text(text)
    with pytest.raises(OpenPoseError, match="bad_keypoints.json") as error:
        read_openpose_people(path)
    assert error.value.field == field
    if field is not None:
        assert f"field '{field}'" in str(error.value)


def test_missing_openpose_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone_keypoints.json"):
        read_openpose(tmp_path / "gone_keypoints.json")


def params(count: int = 3) -> dict:
    rng = np.random.default_rng(0)
    return {
        "image_names": np.array([f"img_{i:03d}" for i in range(count)]),
        "global_orient": rng.normal(size=(count, 3)),
        "body_pose": torch.randn(count, 69, dtype=torch.float64),
        "betas": rng.normal(size=(count, 10)),
        "transl": rng.normal(size=(count, 3)),
        "focal_length": np.full((count, 2), 1000.0),
        "camera_center": np.full((count, 2), 256.0),
    }


def test_params_round_trip(tmp_path):
    written = {**params(), "energy": np.arange(3.0)}
    path = tmp_path / "out" / "results.npz"
    write_params(path, written)
    assert not list(path.parent.glob(".*.tmp"))
    loaded = read_params(path)
    assert loaded.keys() == written.keys()
    assert loaded["image_names"].tolist() == ["img_000", "img_001", "img_002"]
    for key in ("global_orient", "body_pose", "betas", "transl", "focal_length", "camera_center"):
        assert loaded[key].dtype == np.float32, key
        np.testing.assert_allclose(loaded[key], np.asarray(written[key]), rtol=1e-6, err_msg=key)
    np.testing.assert_array_equal(loaded["energy"], written["energy"])


def test_params_camera_defaults_need_the_image_size(tmp_path):
    content = params(2)
    del content["focal_length"], content["camera_center"]
    path = tmp_path / "init.npz"
    np.savez(path, **content)
    with pytest.raises(ParamsFileError, match="init.npz: key 'focal_length': missing"):
        read_params(path)
    loaded = read_params(path, image_size=(640, 480))
    np.testing.assert_allclose(loaded["focal_length"], [[800.0, 800.0]] * 2)
    np.testing.assert_allclose(loaded["camera_center"], [[319.5, 239.5]] * 2)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("betas", np.zeros((3, 11)), "expected shape \\(3, 10\\)"),
        ("transl", np.zeros((2, 3)), "expected shape \\(3, 3\\)"),
        ("body_pose", None, "missing"),
        ("image_names", np.array(["a", "a", "b"]), "unique"),
        ("image_names", np.zeros(3), "strings"),
        ("energy", np.zeros(2), "one row per image"),
    ],
)
def test_bad_params_files_name_file_and_key(tmp_path, key, value, message):
    content = params()
    if value is None:
        del content[key]
    else:
        content[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(ParamsFileError, match=f"bad.npz: key '{key}': .*{message}"):
        read_params(path)
    with pytest.raises(ParamsFileError, match=f"key '{key}'"):
        write_params(tmp_path / "never.npz", content)
    assert not (tmp_path / "never.npz").exists()


def test_unreadable_params_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        read_params(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(ParamsFileError, match="junk.npz"):
        read_params(tmp_path / "junk.npz")
    content = {**params(), "notes": np.array([{"a": 1}] * 3, dtype=object)}
    np.savez(tmp_path / "objects.npz", **content)
    with pytest.raises(ParamsFileError, match="objects.npz: key 'notes'"):
        read_params(tmp_path / "objects.npz")
