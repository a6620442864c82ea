"""Sample groups in SMPLify: multi-view bodies, shared and known shapes, video smoothness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fitting import (
    DTYPE,
    OBSERVED_JOINTS,
    adam_config,
    perturb,
    scene,
    simple_gmm,
    stick_body,
)

import fitkit
from fitkit.body import BodyModel
from fitkit.fitting import FitBatch, FitConfig, SampleGroup, SMPLify, zip_stages
from fitkit.fitting.groups import GroupLayout, rest_root
from fitkit.fitting.multistart import MultiStart
from fitkit.geometry import (
    Camera,
    average_rotations,
    average_world_params,
    axis_angle_to_matrix,
    camera_to_world_params,
    matrix_to_axis_angle,
    world_to_camera_params,
)
from fitkit.geometry.rotations import quaternion_to_axis_angle
from fitkit.io.inputs import FitInputError
from fitkit.terms import KeypointsTerm, TemporalTerm, previous_frames

PARAMS = ("global_orient", "body_pose", "betas", "transl")


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return stick_body()


def ring_cameras(views: int, distance: float = 3.0) -> Camera:
    """``views`` cameras on a circle around the world origin at ``distance`` meters, all
    looking at it (camera y down, the world's y up: the person stands upright in every view)."""
    cameras = Camera.from_image_size(1000, 1000, batch_size=views, dtype=DTYPE)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=DTYPE))  # world y up -> camera y down
    R, t = [], []
    for v in range(views):
        yaw = axis_angle_to_matrix(torch.tensor([0.0, 2 * torch.pi * v / views, 0.0],
                                                dtype=DTYPE))
        rotation = flip @ yaw
        R.append(rotation)
        t.append(torch.tensor([0.0, 0.0, distance], dtype=DTYPE))
    return Camera(cameras.focal_length, cameras.principal_point, cameras.image_size,
                  torch.stack(R), torch.stack(t))


def world_truth(subjects: int, seed: int) -> dict[str, torch.Tensor]:
    """World-frame bodies standing near the origin (world y up)."""
    truth = scene(subjects, seed)
    truth["global_orient"] = truth["global_orient"] - torch.tensor([torch.pi, 0.0, 0.0],
                                                                   dtype=DTYPE)
    truth["transl"] = truth["transl"] - torch.tensor([0.0, -1.1, 3.0], dtype=DTYPE)
    truth["transl"][:, 1] -= 0.9  # pelvis near the world origin
    return truth


def views_of(body: BodyModel, truth: dict[str, torch.Tensor], cameras: Camera,
             per_subject: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], Camera]:
    """Exact keypoints of every subject in every view, the per-view camera-frame truth, and the
    batch's cameras (subject-major rows)."""
    subjects = truth["transl"].shape[0]
    rows = torch.arange(subjects).repeat_interleave(per_subject)
    view = torch.arange(per_subject).repeat(subjects)
    camera = cameras[view]
    world = {name: value[rows] for name, value in truth.items()}
    with torch.no_grad():
        points = camera.to_camera(body(**world).keypoints("openpose25"))
    pixels = camera.project(points)
    keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    orient, transl = world_to_camera_params(world["global_orient"], world["transl"],
                                            rest_root(body, world["betas"]), camera.R, camera.t)
    per_view = dict(world, global_orient=orient, transl=transl)
    return keypoints, per_view, camera


def lbfgs_config(iterations: int = 100) -> FitConfig:
    return FitConfig(stages=zip_stages(
        ("camera", "body"),
        (("global_orient", "transl"), ("global_orient", "body_pose", "betas", "transl")),
        iterations=[20, iterations], optimizer="lbfgs", lr=1.0, torso_only=[True, False],
        pose_prior_weight=[0.0, 0.01], shape_prior_weight=[0.0, 0.1],
    ))


def keypoints_term(keypoints: torch.Tensor) -> KeypointsTerm:
    return KeypointsTerm(keypoints, joint_weights=torch.ones(25), crop_size=224.0)


def test_world_and_camera_parameters_describe_the_same_body(body):
    truth = world_truth(2, seed=5)
    cameras = ring_cameras(2)
    root = rest_root(body, truth["betas"])
    orient, transl = world_to_camera_params(truth["global_orient"], truth["transl"], root,
                                            cameras.R, cameras.t)
    with torch.no_grad():
        seen = cameras.to_camera(body(**truth).vertices)
        direct = body(**dict(truth, global_orient=orient, transl=transl)).vertices
    torch.testing.assert_close(direct, seen)
    back = camera_to_world_params(orient, transl, root, cameras.R, cameras.t)
    torch.testing.assert_close(back[1], truth["transl"])
    torch.testing.assert_close(axis_angle_to_matrix(back[0]),
                               axis_angle_to_matrix(truth["global_orient"]))


def test_averaging_identical_rotations_is_exact():
    quaternion = torch.randn(4, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    rotation = axis_angle_to_matrix(quaternion_to_axis_angle(quaternion / quaternion.norm()))[None]
    same = rotation.expand(5, 3, 3)
    torch.testing.assert_close(average_rotations(same), rotation[0], atol=1e-12, rtol=0)
    orient = matrix_to_axis_angle(same)
    mean, transl = average_world_params(orient, torch.ones(5, 3, dtype=DTYPE),
                                        torch.zeros(5, dtype=torch.long), 1)
    torch.testing.assert_close(axis_angle_to_matrix(mean), rotation, atol=1e-12, rtol=0)
    torch.testing.assert_close(transl, torch.ones(1, 3, dtype=DTYPE))


def test_multi_view_fit_of_exact_keypoints_recovers_the_body_within_1cm(body):
    """Three calibrated views of each of two people; per-view inits perturbed as a regressor's
    (each view's own error); one world body per person."""
    truth = world_truth(2, seed=6)
    keypoints, per_view, camera = views_of(body, truth, ring_cameras(3), 3)
    init = perturb(per_view, seed=7)
    groups = (SampleGroup((0, 1, 2), shares="all"), SampleGroup((3, 4, 5), shares="all"))
    result = SMPLify(body, simple_gmm(), lbfgs_config()).fit(
        keypoints_term(keypoints), camera, init=init, groups=groups)
    rows = [0, 3]
    with torch.no_grad():
        true_joints = body(**truth).joints[:, OBSERVED_JOINTS]
    error = (result.joints[rows][:, OBSERVED_JOINTS] - true_joints).norm(dim=-1)
    assert error.max() < 0.01, error.max(dim=-1).values
    for name in PARAMS:  # one body per group: identical rows
        torch.testing.assert_close(result.params[name][0:3], result.params[name][0:1].expand(3, -1))
    assert result.ok.all()
    torch.testing.assert_close(result.energy[0:3], result.energy[0:1].expand(3))


def test_a_group_of_one_equals_an_ungrouped_fit(body):
    truth = scene(3, seed=8)
    camera = Camera.from_image_size(1000, 1000, batch_size=3, dtype=DTYPE)
    with torch.no_grad():
        pixels = camera.project(body(**truth).keypoints("openpose25"))
    keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    init = perturb(truth, seed=9)
    fitter = SMPLify(body, simple_gmm(), adam_config())
    plain = fitter.fit(keypoints_term(keypoints), camera, init=init)
    for shares in ("all", "betas"):
        grouped = fitter.fit(keypoints_term(keypoints), camera, init=init,
                             groups=(SampleGroup((1,), shares=shares),))
        for name in PARAMS:
            torch.testing.assert_close(grouped.params[name], plain.params[name])
        torch.testing.assert_close(grouped.energy, plain.energy)


def test_groups_are_independent_of_each_other(body):
    """Two multi-view people fitted in one batch or each alone: the same results."""
    truth = world_truth(2, seed=10)
    keypoints, per_view, camera = views_of(body, truth, ring_cameras(2), 2)
    init = perturb(per_view, seed=11)
    fitter = SMPLify(body, simple_gmm(), adam_config())
    both = fitter.fit(keypoints_term(keypoints), camera, init=init,
                      groups=(SampleGroup((0, 1), "all"), SampleGroup((2, 3), "all")))
    for rows in ([0, 1], [2, 3]):
        alone = fitter.fit(keypoints_term(keypoints[rows]), camera[torch.tensor(rows)],
                           init={name: value[rows] for name, value in init.items()},
                           groups=(SampleGroup((0, 1), "all"),))
        for name in PARAMS:
            torch.testing.assert_close(both.params[name][rows], alone.params[name])
        torch.testing.assert_close(both.energy[rows], alone.energy)


def test_known_betas_never_change_and_shared_betas_are_one_shape(body):
    truth = scene(4, seed=12)
    truth["betas"][:, 0] = 0.8
    camera = Camera.from_image_size(1000, 1000, batch_size=4, dtype=DTYPE)
    with torch.no_grad():
        pixels = camera.project(body(**truth).keypoints("openpose25"))
    keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    init = perturb(truth, seed=13)
    init["betas"] = torch.zeros(4, 10, dtype=DTYPE)
    known = truth["betas"][0].clone()
    groups = (SampleGroup((0, 1), shares="betas", betas=known), SampleGroup((2, 3), "betas"))
    result = SMPLify(body, simple_gmm(), adam_config()).fit(
        keypoints_term(keypoints), camera, init=init, groups=groups)
    assert torch.equal(result.params["betas"][0], known)
    assert torch.equal(result.params["betas"][1], known)
    assert torch.equal(result.params["betas"][2], result.params["betas"][3])
    assert not torch.equal(result.params["body_pose"][2], result.params["body_pose"][3])
    assert result.params["betas"][2].abs().sum() > 0  # the shared shape was fitted


def test_temporal_term_smooths_a_sequence_and_refuses_frames_of_different_groups(body):
    frames = 6
    truth = scene(1, seed=14)
    truth = {name: value.repeat(frames, 1) for name, value in truth.items()}
    truth["transl"][:, 0] += torch.linspace(0, 0.1, frames, dtype=DTYPE)  # slow walk
    camera = Camera.from_image_size(1000, 1000, batch_size=frames, dtype=DTYPE)
    with torch.no_grad():
        pixels = camera.project(body(**truth).keypoints("openpose25"))
    noisy = pixels + 6.0 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0),
                                       dtype=DTYPE)
    keypoints = torch.cat([noisy, torch.ones_like(noisy[..., :1])], dim=-1)
    previous = torch.as_tensor(previous_frames([0] * frames))
    init = perturb(truth, seed=15)
    fitter = SMPLify(body, simple_gmm(), adam_config(iterations=40))
    group = (SampleGroup(tuple(range(frames)), shares="betas"),)
    alone = fitter.fit(keypoints_term(keypoints), camera, init=init, groups=group)
    smooth = fitter.fit({"keypoints": keypoints_term(keypoints),
                         "temporal": TemporalTerm(previous, sigma=0.01)},
                        camera, init=init, groups=group)

    def jitter(joints: torch.Tensor) -> torch.Tensor:  # second differences, meters
        return (joints[2:] - 2 * joints[1:-1] + joints[:-2]).norm(dim=-1).mean()

    assert jitter(smooth.joints) < 0.7 * jitter(alone.joints)
    with pytest.raises(ValueError, match="not in one sample group"):
        fitter.fit({"keypoints": keypoints_term(keypoints), "temporal": TemporalTerm(previous)},
                   camera, init=init)


def test_bad_groups_and_lm_with_groups_are_refused(body):
    truth = scene(2, seed=16)
    camera = Camera.from_image_size(1000, 1000, batch_size=2, dtype=DTYPE)
    with torch.no_grad():
        pixels = camera.project(body(**truth).keypoints("openpose25"))
    term = keypoints_term(torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1))
    fitter = SMPLify(body, simple_gmm(), adam_config())
    with pytest.raises(ValueError, match="outside the batch"):
        fitter.fit(term, camera, init=truth, groups=(SampleGroup((0, 2)),))
    with pytest.raises(ValueError, match="belongs to one group"):
        fitter.fit(term, camera, init=truth, groups=(SampleGroup((0, 1)), SampleGroup((1,))))
    with pytest.raises(ValueError, match="shape"):
        GroupLayout.build((SampleGroup((0,), betas=torch.zeros(3)),), 2)
    lm = SMPLify(body, simple_gmm(), adam_config().with_stages(optimizer="lm"))
    with pytest.raises(ValueError, match="lm"):
        lm.fit(term, camera, init=truth, groups=(SampleGroup((0, 1), "all"),))


def test_multi_view_fit_from_scratch_starts_every_view_from_one_world_orientation(body):
    """No init: MultiStart's starts are turned in each group's first view and carried into the
    other views through the extrinsics, so the pooled start is one body; the best start
    recovers the person."""
    truth = world_truth(1, seed=17)
    keypoints, _, camera = views_of(body, truth, ring_cameras(3), 3)
    solver = MultiStart(SMPLify(body, simple_gmm(), lbfgs_config(150)))
    batch = FitBatch({"keypoints": keypoints}, camera,
                     groups=(SampleGroup((0, 1, 2), shares="all"),))
    result = solver.solve(batch)
    with torch.no_grad():
        true_joints = body(**truth).joints[:, OBSERVED_JOINTS]
    error = (result.joints[0:1, OBSERVED_JOINTS] - true_joints).norm(dim=-1)
    assert error.mean() < 0.02, error
    assert result.timings["starts"] == 4.0


def test_fit_keeps_a_known_shape_and_takes_groups_as_lists_of_rows(body):
    truth = scene(3, seed=18)
    truth["betas"][:, 0] = 0.5
    camera = Camera.from_image_size(1000, 1000, batch_size=3, dtype=torch.float32)
    with torch.no_grad():
        pixels = camera.project(body(**truth).keypoints("openpose25").float())
    keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1).numpy()
    init = {name: value.float().numpy() for name, value in perturb(truth, seed=19).items()}
    known = truth["betas"][0].float().numpy()
    result = fitkit.fit(None, init=init, keypoints=keypoints, camera=camera, body=body,
                        betas=known, fix_betas=True, iterations=10, prior=None)
    assert np.array_equal(result.params["betas"].cpu().numpy(), np.repeat(known[None], 3, 0))
    shared = fitkit.fit(None, init=init, keypoints=keypoints, camera=camera, body=body,
                        groups=[[0, 1]], iterations=10, prior=None)
    torch.testing.assert_close(shared.params["betas"][0], shared.params["betas"][1])
    with pytest.raises(FitInputError, match="fix_betas"):
        fitkit.fit(None, init=init, keypoints=keypoints, camera=camera, body=body,
                   fix_betas=True)


def test_fit_takes_per_view_camera_frame_inits_and_renumbers_links_of_dropped_frames(body):
    """Views behind the world origin have camera-frame inits in front of their cameras: none is
    refused. A frame with an unusable init leaves its sequence; the others stay linked."""
    truth = world_truth(1, seed=20)
    keypoints, per_view, camera = views_of(body, truth, ring_cameras(4), 4)
    init = {name: value.float().numpy() for name, value in per_view.items()}
    result = fitkit.fit(None, init=init, keypoints=keypoints.float().numpy(),
                        camera=camera.to(dtype=torch.float32), body=body, iterations=5,
                        prior=None, groups=[SampleGroup((0, 1, 2, 3), shares="all")])
    assert not result.flags["bad_input"].any(), result.errors

    frames = 4
    truth = {name: value.repeat(frames, 1) for name, value in scene(1, seed=21).items()}
    single = Camera.from_image_size(1000, 1000, batch_size=frames, dtype=torch.float32)
    with torch.no_grad():
        pixels = single.project(body(**truth).keypoints("openpose25").float())
    frame_keypoints = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1).numpy()
    init = {name: value.float().numpy() for name, value in truth.items()}
    init["transl"][1] = np.nan
    result = fitkit.fit(None, init=init, keypoints=frame_keypoints, camera=single, body=body,
                        data_term=["keypoints", "temporal"], iterations=5, prior=None,
                        temporal=previous_frames([0] * frames), groups=[list(range(frames))])
    assert result.flags["bad_input"].tolist() == [False, True, False, False]
    assert result.ok[[0, 2, 3]].all()
