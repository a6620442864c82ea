"""The 3D keypoints term: exact energies, unused rows, the torso view, the translation estimate,
fitting joints or markers with SMPLify, reading ``.npz`` files, and its registration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fitkit.body import BodyModel, load_body
from fitkit.fitting import FitConfig, SMPLify, zip_stages
from fitkit.geometry import Camera
from fitkit.geometry.rotations import compose_axis_angle
from fitkit.io.inputs import FitInputError
from fitkit.terms import (
    TERMS,
    Keypoints3DTerm,
    TermContext,
    build_term,
    geman_mcclure,
    term_keywords,
)

PARAMS = ("global_orient", "body_pose", "betas", "transl")
PERTURBED_JOINTS = [0, 1, 2, 3, 4, 15, 16, 17, 18]  # body_pose rows: hips, spine, knees, arms


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body("open")


def scene(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """People about 3 m in front of the camera: plausible poses, random shapes."""
    g = torch.Generator().manual_seed(seed)
    body_pose = 0.2 * torch.randn(batch, 69, generator=g)
    body_pose[:, [9, 12]] += 0.5  # knees flex
    body_pose[:, 52] -= 0.6  # left elbow
    body_pose[:, 55] += 0.6  # right elbow
    global_orient = torch.tensor([[torch.pi, 0.0, 0.0]]) + 0.2 * torch.randn(batch, 3, generator=g)
    return {
        "global_orient": global_orient,
        "body_pose": body_pose,
        "betas": 0.5 * torch.randn(batch, 10, generator=g),
        "transl": torch.tensor([[0.0, -0.2, 3.0]]) + 0.2 * torch.randn(batch, 3, generator=g),
    }


def perturb(truth: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """0.2 rad on 9 joints, 0.1 rad on the root, mean shape, translation 10-20 cm off."""
    g = torch.Generator().manual_seed(seed)
    batch = truth["body_pose"].shape[0]

    def rotate(rotvec: torch.Tensor, angle: float) -> torch.Tensor:
        axis = torch.nn.functional.normalize(torch.randn(rotvec.shape, generator=g), dim=-1)
        return compose_axis_angle([angle * axis, rotvec])

    body_pose = truth["body_pose"].clone().view(batch, 23, 3)
    body_pose[:, PERTURBED_JOINTS] = rotate(body_pose[:, PERTURBED_JOINTS], 0.2)
    direction = torch.nn.functional.normalize(torch.randn(batch, 3, generator=g), dim=-1)
    distance = 0.1 + 0.1 * torch.rand(batch, 1, generator=g)
    return {
        "global_orient": rotate(truth["global_orient"], 0.1),
        "body_pose": body_pose.view(batch, 69),
        "betas": torch.zeros(batch, 10),
        "transl": truth["transl"] + distance * direction,
    }


def observe(body: BodyModel, params: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """``(B, K, 4)`` the body's exact keypoints of set ``name``, confidence 1."""
    with torch.no_grad():
        points = body(**params).keypoints(name)
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def camera(batch: int) -> Camera:
    return Camera.from_image_size(1000, 1000, batch)


@pytest.mark.parametrize("keypoint_set", ["smpl24", "markers"])
def test_fitting_exact_joints_or_markers_recovers_the_body_within_1cm(body, keypoint_set):
    """From a start 0.2 rad off on 9 joints, 0.1 rad on the root, 10-20 cm off and with the
    mean shape: L-BFGS on pose, orientation and translation, then on the shape too."""
    truth = scene(1)
    term = Keypoints3DTerm(observe(body, truth, keypoint_set), keypoint_set)
    config = FitConfig(
        stages=zip_stages(
            ("pose", "shape"),
            (("global_orient", "body_pose", "transl"), PARAMS),
            iterations=20,
            optimizer="lbfgs",
            lr=1.0,
        )
    )
    init = perturb(truth)
    result = SMPLify(body, None, config).fit({"keypoints3d": term}, camera(1), init=init)
    with torch.no_grad():
        true_output = body(**truth)
        start = body(**init)
    assert (start.joints - true_output.joints).norm(dim=-1).mean() > 0.1
    joint_error = (result.joints - true_output.joints).norm(dim=-1).mean()
    marker_error = (result.vertices - true_output.vertices)[:, body.marker_ids].norm(dim=-1)
    assert joint_error < 0.01
    if keypoint_set == "markers":
        assert marker_error.mean() < 0.01
    assert result.ok.all()


def test_energy_is_zero_at_the_truth_and_robust_per_coordinate_away_from_it(body):
    truth = scene(2)
    observed = observe(body, truth, "smpl24")
    observed[1, :, 3] = 0.5  # confidence 0.5 weighs 0.25
    weights = torch.ones(24)
    weights[0] = 3.0
    shift = torch.tensor([0.03, 0.04, 0.0])
    moved = body(**{**truth, "transl": truth["transl"] + shift})
    per_point = geman_mcclure(shift, 0.1).sum()
    for rho, error in ((0.1, per_point), (None, shift.square().sum())):
        term = Keypoints3DTerm(observed, joint_weights=weights, rho=rho)
        assert term.energy(body(**truth), camera(2)).abs().max() < 1e-8
        expected = 26.0 * error * torch.tensor([1.0, 0.25])  # 23 joints of weight 1, one of 3
        torch.testing.assert_close(term.energy(moved, camera(2)), expected)
    assert per_point < shift.square().sum()


def test_unconfident_and_missing_rows_are_ignored_and_empty_samples_keep_their_init(body):
    truth = scene(3)
    exact = observe(body, truth, "smpl24")
    noisy = exact.clone()
    noisy[0, :5, :3] += 1.0
    noisy[0, :3, 3] = 0.0  # rows 0-2 unconfident, rows 3-4 missing
    noisy[0, 3:5] = float("nan")
    noisy[1] = float("nan")  # nothing usable
    noisy[2, :, 3] = -1.0
    term = Keypoints3DTerm(noisy, rho=None)
    assert term.valid.tolist() == [True, False, False]
    params = {name: value.clone().requires_grad_(True) for name, value in truth.items()}
    assert term.energy(body(**params), camera(3)).abs().max() < 1e-8
    moved = {**params, "transl": params["transl"] + torch.tensor([0.0, 0.05, 0.0])}
    energy = term.energy(body(**moved), camera(3))
    rows_kept = Keypoints3DTerm(exact, rho=None, joint_weights=(torch.arange(24) >= 5).float())
    torch.testing.assert_close(energy[0], rows_kept.energy(body(**moved), camera(3))[0])
    assert energy[0] > 0 and (energy[1:] == 0).all()
    energy.sum().backward()
    assert all(value.grad.isfinite().all() for value in params.values())

    config = FitConfig(
        stages=zip_stages(("body",), (PARAMS,), iterations=2, optimizer="adam", lr=0.01)
    )
    init = perturb(truth)
    result = SMPLify(body, None, config).fit({"keypoints3d": term}, camera(3), init=init)
    assert result.flags["no_data"].tolist() == [False, True, True]
    for name in PARAMS:
        torch.testing.assert_close(result.params[name][1:], init[name][1:], rtol=0, atol=0)
    assert not torch.equal(result.params["body_pose"][0], init["body_pose"][0])


def test_torso_view_fits_hips_spine_and_shoulders_with_the_plain_squared_error(body):
    truth = scene(2)
    term = Keypoints3DTerm(observe(body, truth, "smpl24"))
    torso = term.torso()
    assert torso.rho is None and torso.valid.tolist() == term.valid.tolist()
    knees = truth["body_pose"].clone()
    knees[:, [9, 12]] += 0.5  # moves the ankles and feet only
    bent = body(**{**truth, "body_pose": knees})
    assert (torso.energy(bent, camera(2)) == 0).all()
    assert (term.energy(bent, camera(2)) > 0).all()
    spine = truth["body_pose"].clone()
    spine[:, 6] += 0.3  # spine1 bends: spine2, spine3, the shoulders and above move
    leaning = body(**{**truth, "body_pose": spine})
    names = ("pelvis", "left_hip", "right_hip", "spine1", "spine2", "spine3",
             "left_shoulder", "right_shoulder")
    index = [body.joint_names.index(name) for name in names]
    expected = (leaning.joints - body(**truth).joints)[:, index].square().sum(dim=(1, 2))
    assert (expected > 1e-3).all()
    torch.testing.assert_close(torso.energy(leaning, camera(2)), expected)
    markers = Keypoints3DTerm(observe(body, truth, "markers"), "markers")
    assert markers.torso() is markers
    openpose = Keypoints3DTerm(observe(body, truth, "openpose25"), "openpose25").torso()
    assert (openpose.energy(bent, camera(2)) == 0).all()
    assert (openpose.energy(leaning, camera(2)) > 0).all()


def test_translation_estimate_puts_the_body_on_its_keypoints(body):
    truth = scene(3)
    observed = observe(body, truth, "markers")
    observed[1, ::2] = float("nan")
    observed[2] = float("nan")
    term = Keypoints3DTerm(observed, "markers")
    at_origin = {**truth, "transl": torch.zeros(3, 3)}
    estimate = term.estimate_transl(body(**at_origin), camera(3))
    torch.testing.assert_close(estimate[:2], truth["transl"][:2])
    assert (estimate[2] == 0).all()
    config = FitConfig(stages=zip_stages(("start",), (PARAMS,), iterations=0))
    init = {name: truth[name][:2] for name in ("global_orient", "body_pose", "betas")}
    result = SMPLify(body, None, config).fit(
        {"markers": Keypoints3DTerm(observed[:2], "markers")}, camera(2), init=init
    )
    torch.testing.assert_close(result.params["transl"], truth["transl"][:2])


def test_keypoints_that_do_not_match_the_set_give_clear_errors(body):
    output = body(**scene(2))
    with pytest.raises(ValueError, match=r"'smpl24' has 24 keypoints.*\(2, 66, 4\)"):
        Keypoints3DTerm(torch.zeros(2, 66, 4))
    with pytest.raises(ValueError, match=r"'openpose25' has 25 keypoints"):
        Keypoints3DTerm(torch.zeros(2, 24, 4), "openpose25")
    term = Keypoints3DTerm(torch.ones(2, 60, 4), "markers")
    with pytest.raises(ValueError, match=r"'markers' set has 66 keypoints.*have 60"):
        term.energy(output, camera(2))
    with pytest.raises(ValueError, match="keypoint_set must be one of"):
        Keypoints3DTerm(torch.zeros(2, 24, 4), "hands")
    with pytest.raises(ValueError, match=r"shape \(B, K, 4\)"):
        Keypoints3DTerm(torch.zeros(2, 24, 3))
    with pytest.raises(ValueError, match="batch sizes disagree"):
        Keypoints3DTerm(torch.ones(2, 24, 4)).energy(output, camera(3))


def write_sample(path, keypoints: np.ndarray, keypoint_set: str | None = None) -> None:
    arrays = {"keypoints3d": keypoints}
    if keypoint_set is not None:
        arrays["keypoint_set"] = np.array(keypoint_set)
    np.savez(path, **arrays)


def test_npz_files_are_read_with_per_sample_errors_and_name_their_keypoint_set(body, tmp_path):
    truth = scene(3)
    markers = observe(body, truth, "markers").double().numpy()
    paths = [tmp_path / f"{name}.npz" for name in ("a", "b", "c")]
    write_sample(paths[0], markers[0], "markers")
    write_sample(paths[2], markers[2])
    errors = [""] * 3
    observations = Keypoints3DTerm.read(paths, errors)
    assert "b.npz" in errors[1] and errors[0] == errors[2] == ""
    keypoints = observations["keypoints3d"]
    assert keypoints.dtype == np.float32 and keypoints.shape == (3, 66, 4)
    assert np.isnan(keypoints[1]).all()
    np.testing.assert_array_equal(keypoints[[0, 2]], markers[[0, 2]].astype(np.float32))
    context = TermContext(body, camera(3))
    term = Keypoints3DTerm.from_observations(
        {key: torch.as_tensor(value) for key, value in observations.items()}, context
    )
    assert term.keypoint_set == "markers" and term.valid.tolist() == [True, False, True]
    assert term.energy(body(**truth), camera(3)).abs().max() < 1e-8
    blanked = Keypoints3DTerm.blank(observations, np.array([True, False, False]))
    blank_term = Keypoints3DTerm.from_observations(blanked, context)
    assert blank_term.keypoint_set == "markers"
    assert blank_term.valid.tolist() == [False, False, True]
    with pytest.raises(FitInputError, match="keypoint_set='smpl24'"):
        Keypoints3DTerm.from_observations(
            observations, TermContext(body, camera(3), options={"keypoint_set": "smpl24"})
        )

    with pytest.raises(FileNotFoundError, match="b.npz"):
        Keypoints3DTerm.read(paths)
    write_sample(tmp_path / "joints.npz", markers[0, :24])
    with pytest.raises(FitInputError, match=r"joints.npz: key 'keypoints3d': 24 keypoints"):
        Keypoints3DTerm.read([paths[0], tmp_path / "joints.npz"])
    write_sample(tmp_path / "named.npz", markers[1], "smpl24")
    with pytest.raises(FitInputError, match=r"named.npz: key 'keypoints3d': 'smpl24' has 24"):
        Keypoints3DTerm.read([tmp_path / "named.npz"])
    write_sample(tmp_path / "joints_named.npz", markers[0, :24], "smpl24")
    write_sample(tmp_path / "markers_named.npz", markers[1, :24], "markers")
    with pytest.raises(FitInputError, match=r"markers_named.npz: key 'keypoint_set': 'markers'"):
        Keypoints3DTerm.read([tmp_path / "joints_named.npz", tmp_path / "markers_named.npz"])
    np.savez(tmp_path / "other.npz", points=markers[0])
    np.savez(tmp_path / "flat.npz", keypoints3d=markers[0, :, :3])
    np.savez(tmp_path / "pickled.npz", keypoints3d=np.array([{"x": 1}, None], dtype=object))
    for name, message in (("other", ": key 'keypoints3d': missing"),
                          ("flat", ": key 'keypoints3d': expected"), ("pickled", "")):
        with pytest.raises(FitInputError, match=rf"{name}\.npz{message}"):
            Keypoints3DTerm.read(tmp_path / f"{name}.npz")
    errors = [""] * 2
    Keypoints3DTerm.read([paths[0], tmp_path / "flat.npz"], errors)
    assert errors[0] == "" and "flat.npz: key 'keypoints3d'" in errors[1]


def test_arrays_and_tensors_are_read_as_one_batch():
    observations = Keypoints3DTerm.read(np.ones((24, 4)))
    assert observations["keypoints3d"].shape == (1, 24, 4)
    assert observations["keypoint_set"].tolist() == [0]
    assert Keypoints3DTerm.read(torch.ones(2, 66, 4))["keypoints3d"].dtype == np.float32
    with pytest.raises(FitInputError, match=r"\(B, K, 4\)"):
        Keypoints3DTerm.read(np.ones((2, 24, 3)))


def test_term_is_registered_and_describes_its_input():
    assert TERMS["keypoints3d"] is Keypoints3DTerm
    assert term_keywords()["keypoints3d"] == "keypoints3d"
    assert Keypoints3DTerm.dataset_pattern.format(name="img_001") == "keypoints3d/img_001.npz"
    term = build_term("keypoints3d", keypoints=torch.ones(2, 25, 4), keypoint_set="openpose25")
    assert isinstance(term, Keypoints3DTerm) and term.rho == 0.1
