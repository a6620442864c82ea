"""ReFit with sample groups (seed 001 §3.5): multi-view ReFit (one body pooled over calibrated
views at every iteration) and its baseline (final estimates averaged), Shape ReFit (a known shape
in the loop) and its baseline (the shape substituted at the end) — on a tiny random network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fitkit.body import load_body
from fitkit.fitting import FitBatch, SampleGroup
from fitkit.fitting.refit_solver import ReFitSolver
from fitkit.geometry import (
    Camera,
    average_rotations,
    average_world_params,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    world_to_camera_params,
)
from fitkit.nets.refit import ReFit, ReFitConfig

TINY = ReFitConfig(image_size=32, width=8, keypoint_width=8, feedback_size=16, hidden=8)
SIZE = 64
PARAMS = ("global_orient", "body_pose", "betas", "transl")


@pytest.fixture(scope="module")
def body():
    return load_body("open")


@pytest.fixture(scope="module")
def net():
    """A tiny random ReFit whose updates are large enough to matter (not the near-zero
    updates of a fresh network's output layers)."""
    torch.manual_seed(3)
    net = ReFit(TINY).eval()
    with torch.no_grad():
        for layer in (net.update.out_pose, net.update.out_shape, net.update.out_camera):
            layer.weight.mul_(20.0)
    return net


def _views(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` cameras on a circle around the world origin, 4 m away, looking at it."""
    angles = torch.linspace(0.0, 2 * np.pi, count + 1)[:count] + 0.3 * seed
    R = axis_angle_to_matrix(torch.stack([torch.zeros(count), angles, torch.zeros(count)], -1))
    t = torch.tensor([[0.05 * seed, 0.1, 4.0]]).expand(count, 3).clone()
    return R, t


def _world_body(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"global_orient": torch.tensor([[np.pi, 0.0, 0.0]])
            + 0.2 * torch.randn(1, 3, generator=generator),
            "body_pose": 0.2 * torch.randn(1, 69, generator=generator),
            "betas": torch.randn(1, 10, generator=generator),
            "transl": 0.1 * torch.randn(1, 3, generator=generator)}


def _multiview(body, views: int, seed: int, identical: bool = False) -> tuple[dict, Camera, list]:
    """Per-view camera-frame inits (each view's own perturbation), cameras and images of one
    body seen by ``views`` cameras."""
    truth = _world_body(seed)
    R, t = _views(views, seed)
    if identical:
        R, t = R[:1].expand(views, 3, 3).clone(), t[:1].expand(views, 3).clone()
    root = body(betas=truth["betas"]).joints[:, 0].expand(views, 3)
    orient, transl = world_to_camera_params(truth["global_orient"].expand(views, 3),
                                            truth["transl"].expand(views, 3), root, R, t)
    generator = torch.Generator().manual_seed(100 + seed)
    noise = 0.0 if identical else 1.0
    init = {"global_orient": orient + noise * 0.1 * torch.randn(views, 3, generator=generator),
            "body_pose": truth["body_pose"].expand(views, 69)
            + noise * 0.1 * torch.randn(views, 69, generator=generator),
            "betas": truth["betas"].expand(views, 10)
            + noise * 0.3 * torch.randn(views, 10, generator=generator),
            "transl": transl + noise * 0.05 * torch.randn(views, 3, generator=generator)}
    camera = Camera.default(torch.tensor([[float(SIZE), float(SIZE)]]).expand(views, 2))
    camera = Camera(camera.focal_length, camera.principal_point, camera.image_size, R, t)
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)]
    images = images * views if identical else [
        rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(views)]
    return init, camera, images


def _cat_cameras(cameras: list[Camera]) -> Camera:
    return Camera(*(torch.cat([getattr(c, name) for c in cameras]) for name in
                    ("focal_length", "principal_point", "image_size", "R", "t")))


def _close(first: dict, second: dict, atol: float = 1e-4) -> None:
    for key in PARAMS:
        torch.testing.assert_close(first[key], second[key], atol=atol, rtol=0)


def _recording(solver: ReFitSolver) -> list:
    """Record every estimate the network makes (the bodies its feedback reprojects)."""
    seen = []
    estimate = solver.net.estimate

    def wrapped(*args, **kwargs):
        seen.append(estimate(*args, **kwargs))
        return seen[-1]

    solver.net.estimate = wrapped
    return seen


@pytest.mark.parametrize("mode", ["pool", "average_final"])
def test_multiview_group_is_one_world_body_seen_consistently_by_every_view(body, net, mode):
    init, camera, images = _multiview(body, 3, seed=1)
    solver = ReFitSolver(body, net, iterations=3, multiview=mode)
    seen = _recording(solver)
    result = solver.solve(FitBatch({}, camera, init, images=images,
                                   groups=(SampleGroup((0, 1, 2), "all"),)))
    for key in PARAMS:  # one body: identical rows
        assert torch.equal(result.params[key][0], result.params[key][1])
        assert torch.equal(result.params[key][0], result.params[key][2])
    assert len(seen) == 4  # Θ_0 ... Θ_3
    in_world = [(estimate.joints - camera.t[:, None]) @ camera.R for estimate in seen]
    if mode == "pool":  # every body the feedback reprojects is the one world body
        for joints in in_world:
            torch.testing.assert_close(joints, joints[:1].expand_as(joints), atol=2e-4, rtol=0)
        # and the result is that body: each view's last estimate, in the world frame
        torch.testing.assert_close(result.joints, in_world[-1], atol=2e-4, rtol=0)
    else:  # the baseline lets the views disagree until the end
        assert (in_world[-1] - in_world[-1][:1]).abs().amax() > 1e-2


def test_average_final_is_the_chordal_mean_of_the_views_own_results(body, net):
    init, camera, images = _multiview(body, 3, seed=2)
    solver = ReFitSolver(body, net, iterations=2, multiview="average_final")
    alone = solver.solve(FitBatch({}, camera, init, images=images)).params  # world frame
    pooled = solver.solve(FitBatch({}, camera, init, images=images,
                                   groups=(SampleGroup((0, 1, 2), "all"),))).params
    betas = alone["betas"].mean(dim=0)
    rotations = axis_angle_to_matrix(alone["body_pose"].view(3, 23, 3)).transpose(0, 1)
    body_pose = matrix_to_axis_angle(average_rotations(rotations)).flatten()
    own_root = body(betas=alone["betas"]).joints[:, 0]
    orient, pelvis = average_world_params(alone["global_orient"], alone["transl"] + own_root,
                                          torch.zeros(3, dtype=torch.long), 1)
    transl = pelvis[0] - body(betas=betas[None]).joints[0, 0]
    expected = {"global_orient": orient[0], "body_pose": body_pose, "betas": betas,
                "transl": transl}
    _close({key: pooled[key][0] for key in PARAMS}, expected)
    assert not torch.allclose(alone["body_pose"][0], alone["body_pose"][1], atol=1e-2)
    multiview = ReFitSolver(body, net, iterations=2).solve(
        FitBatch({}, camera, init, images=images, groups=(SampleGroup((0, 1, 2), "all"),)))
    assert (multiview.params["body_pose"] - pooled["body_pose"]).abs().amax() > 1e-3


@pytest.mark.parametrize("mode", ["pool", "average_final"])
def test_pooling_identical_views_equals_one_view(body, net, mode):
    init, camera, images = _multiview(body, 3, seed=3, identical=True)
    solver = ReFitSolver(body, net, iterations=3, multiview=mode)
    one = solver.solve(FitBatch({}, camera[0:1], {k: v[:1] for k, v in init.items()},
                                images=images[:1]))
    three = solver.solve(FitBatch({}, camera, init, images=images,
                                  groups=(SampleGroup((0, 1, 2), "all"),)))
    _close({key: three.params[key][2:3] for key in PARAMS}, one.params)
    torch.testing.assert_close(three.vertices[2:3], one.vertices, atol=2e-4, rtol=0)


@pytest.mark.parametrize("extrinsics", [True, False])
def test_a_group_of_one_equals_an_ungrouped_fit(body, net, extrinsics):
    init, camera, images = _multiview(body, 2, seed=4)
    if not extrinsics:
        camera = Camera(camera.focal_length, camera.principal_point, camera.image_size)
    solver = ReFitSolver(body, net, iterations=3)
    plain = solver.solve(FitBatch({}, camera, init, images=images))
    grouped = solver.solve(FitBatch({}, camera, init, images=images, groups=(
        SampleGroup((0,), "all"), SampleGroup((1,), "betas"))))
    _close(grouped.params, plain.params)


def test_groups_are_independent_batched_equals_one_by_one(body, net):
    parts = [_multiview(body, 3, seed=5), _multiview(body, 2, seed=6),
             _multiview(body, 1, seed=7)]
    known = torch.randn(10, generator=torch.Generator().manual_seed(8))
    order = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]  # (part, view), interleaved
    init = {key: torch.stack([parts[p][0][key][v] for p, v in order]) for key in PARAMS}
    camera = _cat_cameras([parts[p][1][v:v + 1] for p, v in order])
    images = [parts[p][2][v] for p, v in order]
    rows = {p: tuple(i for i, (q, _) in enumerate(order) if q == p) for p in range(3)}
    groups = (SampleGroup(rows[0], "all"), SampleGroup(rows[1], "all", betas=known),
              SampleGroup(rows[2], "betas"))
    solver = ReFitSolver(body, net, iterations=3)
    batched = solver.solve(FitBatch({}, camera, init, images=images, groups=groups))
    for p, (part_init, part_camera, part_images) in enumerate(parts):
        group = SampleGroup(tuple(range(len(part_images))), groups[p].shares, groups[p].betas)
        alone = solver.solve(FitBatch({}, part_camera, part_init, images=part_images,
                                      groups=(group,)))
        _close({key: batched.params[key][list(rows[p])] for key in PARAMS}, alone.params)


@pytest.mark.parametrize("mode", ["pool", "average_final"])
@pytest.mark.parametrize("shares", ["all", "betas"])
def test_shape_refit_never_changes_the_given_betas_and_feeds_them_back(body, net, shares, mode):
    init, camera, images = _multiview(body, 3, seed=9)
    known = torch.randn(10, generator=torch.Generator().manual_seed(10))
    groups = (SampleGroup((0, 1), shares, betas=known), SampleGroup((2,), betas=known * 0.5))
    feedback = ReFitSolver(body, net, iterations=3, multiview=mode, shape="feedback")
    seen = _recording(feedback)
    result = feedback.solve(FitBatch({}, camera, init, images=images, groups=groups))
    assert torch.equal(result.params["betas"][0], known)
    assert torch.equal(result.params["betas"][1], known)
    assert torch.equal(result.params["betas"][2], known * 0.5)
    for estimate in seen:  # the feedback of every iteration reads the known shape
        assert torch.equal(estimate.betas, torch.stack([known, known, known * 0.5]))
    substitute = ReFitSolver(body, net, iterations=3, multiview=mode, shape="substitute").solve(
        FitBatch({}, camera, init, images=images, groups=groups))
    assert torch.equal(substitute.params["betas"][:2], known.expand(2, 10))
    # the loop saw another shape, so it moved the pose elsewhere
    assert (substitute.params["body_pose"] - result.params["body_pose"]).abs().amax() > 1e-3
    # substituted in place: the lone view keeps the plain fit's pose and camera-frame position
    plain = ReFitSolver(body, net, iterations=3).solve(FitBatch({}, camera, init,
                                                                images=images)).params
    assert not torch.allclose(plain["betas"], known.expand(3, 10), atol=1e-2)
    lone = {key: value[2:] for key, value in substitute.params.items()}
    root = body(betas=lone["betas"]).joints[:, 0]
    orient, transl = world_to_camera_params(lone["global_orient"], lone["transl"], root,
                                            camera.R[2:], camera.t[2:])
    plain_root = body(betas=plain["betas"][2:]).joints[:, 0]
    plain_orient, plain_transl = world_to_camera_params(
        plain["global_orient"][2:], plain["transl"][2:], plain_root, camera.R[2:], camera.t[2:])
    torch.testing.assert_close(transl, plain_transl, atol=1e-5, rtol=0)
    torch.testing.assert_close(orient, plain_orient, atol=1e-5, rtol=0)
    torch.testing.assert_close(lone["body_pose"], plain["body_pose"][2:], atol=1e-6, rtol=0)


def test_keypoints_energy_is_measured_in_each_view(body, net):
    init, camera, images = _multiview(body, 2, seed=11)
    solver = ReFitSolver(body, net, iterations=1)
    groups = (SampleGroup((0, 1), "all"),)
    result = solver.solve(FitBatch({}, camera, init, images=images, groups=groups))
    world = body(**{key: result.params[key] for key in PARAMS}).keypoints("openpose25")
    pixels = camera.project(camera.to_camera(world))  # the fitted body's keypoints, each view
    found = pixels.isfinite().all(dim=-1, keepdim=True)
    keypoints = torch.cat([torch.nan_to_num(pixels), found.float()], dim=-1)
    exact = solver.solve(FitBatch({"keypoints": keypoints}, camera, init, images=images,
                                  groups=groups))
    _close(exact.params, result.params, atol=1e-6)
    shifted = keypoints + torch.tensor([3.0, 0.0, 0.0])
    off = solver.solve(FitBatch({"keypoints": shifted}, camera, init, images=images,
                                groups=groups))
    assert set(exact.terms) == {"keypoints"}
    assert (exact.energy < 1e-3 * off.energy).all()


def test_bad_groups_and_modes_are_refused(body, net):
    init, camera, images = _multiview(body, 2, seed=12)
    solver = ReFitSolver(body, net, iterations=1)
    for groups in [(SampleGroup((0, 1), "all"), SampleGroup((1,), "betas")),
                   (SampleGroup((0, 5), "all"),), (SampleGroup((0,), betas=torch.zeros(3)),)]:
        with pytest.raises(ValueError, match="sample group"):
            solver.solve(FitBatch({}, camera, init, images=images, groups=groups))
    with pytest.raises(ValueError, match="multiview must be one of"):
        ReFitSolver(body, net, multiview="mean")
    with pytest.raises(ValueError, match="shape must be one of"):
        ReFitSolver(body, net, shape="fixed")
