"""Data terms: the keypoints term, the Geman-McClure robustifier and the term registry."""

from __future__ import annotations

import pytest
import torch
from test_fitting import DTYPE, exact_keypoints, scene, stick_body

from fitkit.body import OPENPOSE25_NAMES
from fitkit.geometry import Camera
from fitkit.terms import (
    TERMS,
    DataTerm,
    KeypointsTerm,
    build_term,
    default_joint_weights,
    geman_mcclure,
    register_term,
)


@pytest.fixture(scope="module")
def body():
    return stick_body()


def camera(batch: int = 2, size: int = 1000) -> Camera:
    return Camera.from_image_size(size, size, batch_size=batch, dtype=DTYPE)


def test_geman_mcclure_is_quadratic_near_zero_and_bounded_by_rho_squared():
    r = torch.tensor([0.0, 1.0, -1.0, 1e4], dtype=DTYPE)
    value = geman_mcclure(r, 100.0)
    assert value[0] == 0
    torch.testing.assert_close(value[1:3], torch.full((2,), 1e4 / (1e4 + 1), dtype=DTYPE))
    assert 0.99 * 100.0**2 < value[3] < 100.0**2
    assert (geman_mcclure(torch.linspace(0, 500, 50), 100.0).diff() > 0).all()


def test_energy_is_zero_at_the_truth_and_grows_monotonically_away_from_it(body):
    truth = scene(2)
    cam = camera()
    term = KeypointsTerm(exact_keypoints(body, truth, cam), crop_size=224.0)
    assert term.energy(body(**truth), cam).abs().max() < 1e-8
    shifted = []
    for offset in torch.linspace(0.0, 0.5, 11):
        params = {**truth, "transl": truth["transl"] + torch.tensor([offset, 0.0, 0.0])}
        shifted.append(term.energy(body(**params), cam))
    bent = []
    direction = torch.zeros(69, dtype=DTYPE)
    direction[[9, 12, 47, 50]] = 1.0  # knees and shoulders
    for scale in torch.linspace(0.0, 0.6, 11):
        params = {**truth, "body_pose": truth["body_pose"] + scale * direction}
        bent.append(term.energy(body(**params), cam))
    for energies in (torch.stack(shifted), torch.stack(bent)):
        assert (energies[0] < 1e-8).all()
        assert (energies.diff(dim=0) > 0).all()


def test_missing_and_unconfident_keypoints_are_ignored(body):
    truth = scene(3)
    cam = camera(3)
    keypoints = exact_keypoints(body, truth, cam)
    keypoints[..., :2] += 30.0  # every keypoint is off by 30 px
    dropped = [0, 4, 7, 10]
    weights = default_joint_weights()
    weights[dropped] = 0.0
    reference = KeypointsTerm(keypoints, joint_weights=weights).energy(body(**truth), cam)
    holes = keypoints.clone()
    holes[0, dropped] = float("nan")
    holes[1, dropped, 2] = 0.0
    holes[2, dropped, 2] = -1.0
    holes[2, dropped, :2] = float("inf")
    term = KeypointsTerm(holes)
    torch.testing.assert_close(term.energy(body(**truth), cam), reference)
    assert term.valid.all()


def test_sample_without_valid_keypoints_has_zero_energy_and_is_invalid(body):
    truth = scene(2)
    cam = camera()
    keypoints = exact_keypoints(body, truth, cam)
    keypoints[..., :2] += 10.0
    keypoints[1] = float("nan")
    term = KeypointsTerm(keypoints)
    params = {name: value.clone().requires_grad_(True) for name, value in truth.items()}
    energy = term.energy(body(**params), cam)
    assert term.valid.tolist() == [True, False]
    assert energy[0] > 0 and energy[1] == 0
    energy.sum().backward()
    assert all(torch.isfinite(value.grad).all() for value in params.values())


def test_default_weights_switch_off_neck_and_hips_and_torso_view_uses_only_the_torso(body):
    weights = default_joint_weights()
    off = [OPENPOSE25_NAMES[i] for i in torch.nonzero(weights == 0).flatten().tolist()]
    assert off == ["Neck", "RHip", "LHip"]
    truth = scene(1)
    cam = camera(1)
    keypoints = exact_keypoints(body, truth, cam)
    torso = [OPENPOSE25_NAMES.index(n) for n in ("RShoulder", "LShoulder", "RHip", "LHip")]
    limbs = [i for i in range(25) if i not in torso]
    keypoints[0, limbs, :2] += 50.0
    keypoints[0, :, 2] = 0.5
    term = KeypointsTerm(keypoints)
    assert term.torso().energy(body(**truth), cam) < 1e-8
    keypoints[0, torso[0], 0] += 3.0  # plain squared error, not weighted by confidence
    torch.testing.assert_close(
        KeypointsTerm(keypoints).torso().energy(body(**truth), cam),
        torch.tensor([9.0], dtype=DTYPE),
    )


def test_crop_size_makes_the_energy_independent_of_image_resolution(body):
    truth = scene(2)
    small, large = camera(2, 500), camera(2, 1000)
    small = Camera(large.focal_length / 2, small.principal_point, small.image_size)
    energies = []
    for cam in (small, large):
        keypoints = exact_keypoints(body, truth, cam)
        keypoints[..., :2] += keypoints.new_tensor([3.0, -2.0]) * cam.image_size[:, None] / 500
        term = KeypointsTerm(keypoints, crop_size=224.0)
        energies.append(term.energy(body(**truth), cam))
    torch.testing.assert_close(energies[0], energies[1])


def test_bad_keypoints_give_clear_errors(body):
    with pytest.raises(ValueError, match=r"keypoints must have shape \(B, 25, 3\)"):
        KeypointsTerm(torch.zeros(2, 18, 3))
    with pytest.raises(ValueError, match=r"keypoints must have shape"):
        KeypointsTerm(torch.zeros(25, 3))
    with pytest.raises(ValueError, match=r"joint_weights must have shape \(25,\)"):
        KeypointsTerm(torch.zeros(2, 25, 3), joint_weights=torch.ones(24))
    truth = scene(2)
    term = KeypointsTerm(exact_keypoints(body, truth, camera()))
    with pytest.raises(ValueError, match="batch sizes disagree"):
        term.energy(body(**truth), camera(3))


def test_registry_builds_terms_by_name_and_refuses_unknown_or_duplicate_names():
    keypoints = torch.rand(2, 25, 3)
    term = build_term("keypoints", keypoints=keypoints, crop_size=224.0)
    assert isinstance(term, KeypointsTerm) and term.crop_size == 224.0
    assert TERMS["keypoints"] is KeypointsTerm
    with pytest.raises(KeyError, match="unknown data term 'silhouette'"):
        build_term("silhouette", keypoints=keypoints)
    with pytest.raises(ValueError, match="already registered"):
        register_term("keypoints")(type("Other", (DataTerm,), {}))
