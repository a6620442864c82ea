"""Per-sample Levenberg-Marquardt (``optimizer="lm"``): independence, monotone energies, the
same energy as the gradient optimizers, its Jacobians, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from test_fitting import (
    DTYPE,
    HalfLatent,
    adam_config,
    exact_keypoints,
    perturb,
    scene,
    simple_gmm,
    stick_body,
    subset,
)

import fitkit.fitting.smplify
from fitkit.fitting import FitConfig, SMPLify, StageConfig, preset, zip_stages
from fitkit.fitting.lm import (
    body_jacobian,
    jacobian,
    right_jacobian,
    stage_residuals,
    structured_jacobian,
)
from fitkit.geometry import Camera
from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.priors import load as load_prior
from fitkit.terms import DataTerm, Keypoints3DTerm, KeypointsTerm

PARAMS = ("global_orient", "body_pose", "betas", "transl")


@pytest.fixture(scope="module")
def body():
    return stick_body()


@pytest.fixture(scope="module")
def camera() -> Camera:
    return Camera.from_image_size(1000, 1000, batch_size=8, dtype=DTYPE)


def lm_config(iterations: int = 10, **changes) -> FitConfig:
    return adam_config(iterations, optimizer="lm", **changes)


def body_stage_config(optimizer: str, iterations: int) -> FitConfig:
    """One stage that frees pose, shape and orientation with every weight of SPIN's body stage
    plus a depth prior (so every residual form takes part)."""
    return FitConfig(stages=zip_stages(
        ("body",), (("global_orient", "body_pose", "betas", "transl"),), iterations=iterations,
        optimizer=optimizer, pose_prior_weight=1.0, shape_prior_weight=2.0,
        bending_weight=0.5, depth_weight=3.0))


def test_batched_lm_fit_equals_fitting_each_sample_alone(body, camera):
    truth = scene(3, seed=20)
    keypoints = exact_keypoints(body, truth, camera[:3])
    init = perturb(truth, seed=21)
    fitter = SMPLify(body, simple_gmm(), lm_config())
    batched = fitter.fit(KeypointsTerm(keypoints, crop_size=224.0), camera[:3], init=init)
    for i in range(3):
        alone = fitter.fit(KeypointsTerm(keypoints[i:i + 1], crop_size=224.0), camera[i],
                           init=subset(init, [i]))
        for name in PARAMS:
            torch.testing.assert_close(batched.params[name][i:i + 1], alone.params[name])
        torch.testing.assert_close(batched.energy[i:i + 1], alone.energy)


def test_lm_never_raises_a_samples_energy_and_lowers_it_from_a_poor_start(body, camera):
    """From starts far off (0.2 rad on 9 joints, plus 0.5 rad of noise on every joint), the
    energy after k iterations never exceeds the energy after fewer."""
    truth = scene(4, seed=22)
    keypoints = exact_keypoints(body, truth, camera[:4])
    init = perturb(truth, seed=23)
    init["body_pose"] = init["body_pose"] + 0.5 * torch.randn(
        4, 69, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    term = KeypointsTerm(keypoints, crop_size=224.0)
    energies = [SMPLify(body, simple_gmm(), body_stage_config("lm", k)).fit(
        term, camera[:4], init=init).energy for k in (0, 1, 2, 4, 8)]
    for before, after in zip(energies, energies[1:], strict=False):
        assert (after <= before).all()
    assert (energies[-1] < 0.5 * energies[0]).all()


def test_lm_energy_is_the_stage_energy_the_adam_path_computes(body, camera):
    truth = scene(3, seed=24)
    keypoints = exact_keypoints(body, truth, camera[:3])
    keypoints[..., :2] += 30.0 * torch.randn(keypoints[..., :2].shape, dtype=DTYPE,
                                             generator=torch.Generator().manual_seed(1))
    init = perturb(truth, seed=25)
    term = KeypointsTerm(keypoints, crop_size=224.0)  # robust (rho 100): outliers saturate
    result = SMPLify(body, simple_gmm(), body_stage_config("lm", 5)).fit(
        term, camera[:3], init=init)
    reference = SMPLify(body, simple_gmm(), body_stage_config("adam", 0))
    at_result = reference.fit(term, camera[:3], init={name: result.params[name] for name in PARAMS})
    for name in ("keypoints", "pose_prior", "shape_prior", "bending"):
        torch.testing.assert_close(result.terms[name], at_result.terms[name])
    # the depth prior's anchor is where the fit started
    depth = 3.0**2 * (result.params["transl"][:, 2] - init["transl"][:, 2]).square()
    torch.testing.assert_close(result.terms["depth"], depth)
    torch.testing.assert_close(result.energy, sum(result.terms.values()))
    adam_start = reference.fit(term, camera[:3], init=init)
    lm_start = SMPLify(body, simple_gmm(), body_stage_config("lm", 0)).fit(
        term, camera[:3], init=init)
    torch.testing.assert_close(lm_start.energy, adam_start.energy)


def test_lm_beats_two_hundred_adam_iterations_on_exact_keypoints(body, camera):
    truth = scene(8, seed=26)
    keypoints = exact_keypoints(body, truth, camera)
    init = perturb(truth, seed=27)
    term = KeypointsTerm(keypoints, crop_size=224.0)
    adam = SMPLify(body, simple_gmm(), adam_config(100)).fit(term, camera, init=init)
    lm = SMPLify(body, simple_gmm(), lm_config(15)).fit(term, camera, init=init)
    assert int((lm.energy <= adam.energy).sum()) >= 7, (lm.energy, adam.energy)
    assert lm.ok.all()


def test_structured_jacobian_equals_forward_mode_autodiff():
    """Through the kinematic chain, skinning and pose blend shapes (random ones on the stick
    body: the open body has none), in a stage with every residual form, for the body and the
    camera stage's free parameters."""
    body = stick_body()
    g = torch.Generator().manual_seed(3)
    body.skinning.posedirs = 0.02 * torch.randn(body.skinning.posedirs.shape, generator=g,
                                                dtype=DTYPE)
    config = preset("spin")
    camera = config.camera(224, 224, 2, dtype=DTYPE)
    values = {name: 0.3 * torch.randn(2, size, generator=g, dtype=DTYPE)
              for name, size in (("global_orient", 3), ("body_pose", 69), ("betas", 10))}
    values["global_orient"][:, 0] += torch.pi
    values["transl"] = torch.tensor([[0.1, 0.2, 40.0], [-0.1, 0.3, 35.0]], dtype=DTYPE)
    keypoints = exact_keypoints(body, {name: v.detach() for name, v in values.items()}, camera)
    keypoints[..., :2] += 150.0 * torch.randn(keypoints[..., :2].shape, generator=g,
                                              dtype=DTYPE)  # some targets saturate
    term = config.build_term("keypoints", keypoints=keypoints)
    prior = load_prior("gmm").to(dtype=DTYPE)
    stage = body_stage_config("lm", 1).stages[0]
    anchor = values["transl"][:, 2] - 0.5
    ids = term.body_vertices(body)
    for free in ({"betas": 10, "global_orient": 3, "body_pose": 69, "transl": 3},
                 {"transl": 3, "global_orient": 3}):

        def residuals(theta, free=free):
            current = {**values, **dict(zip(free, theta.split(list(free.values()), -1),
                                            strict=True))}
            output = body(**current, vertex_ids=ids)
            parts = stage_residuals(stage, current, current["body_pose"], output,
                                    {"keypoints": term}, camera, prior, {}, anchor, irls=True)
            return torch.cat(list(parts.values()), dim=-1)

        theta = torch.cat([values[name] for name in free], dim=-1)
        expected, expected_residual = jacobian(residuals, theta)
        found, found_residual = structured_jacobian(
            stage, body, values, free, {"keypoints": term}, camera, prior, {}, anchor, ids)
        torch.testing.assert_close(found_residual, expected_residual)
        joints, vertices, _, _ = body_jacobian(body, values, ids)
        output = body(**values, vertex_ids=ids)
        torch.testing.assert_close(joints, output.joints)
        torch.testing.assert_close(vertices, output.vertices)
        torch.testing.assert_close(found, expected, rtol=1e-7, atol=1e-7 * expected.abs().max())


def test_right_jacobian_maps_an_increment_onto_the_rotation_it_makes():
    theta = torch.tensor([[0.3, -1.2, 0.5], [1e-6, 0.0, 2e-6]], dtype=DTYPE)
    delta = 1e-6 * torch.tensor([0.4, 0.1, -0.7], dtype=DTYPE)
    moved = axis_angle_to_matrix(theta + delta)
    local = (right_jacobian(theta) @ delta)
    torch.testing.assert_close(moved, axis_angle_to_matrix(theta) @ axis_angle_to_matrix(local),
                               rtol=0, atol=1e-11)


class NaNResiduals(KeypointsTerm):
    """Keypoints whose residuals turn NaN for the samples in ``poisoned`` from the n-th call
    on."""

    def __init__(self, keypoints, poisoned: list[int], after: int, **options) -> None:
        super().__init__(keypoints, **options)
        self.poisoned = torch.zeros(keypoints.shape[0], dtype=torch.bool)
        self.poisoned[poisoned] = True
        self.after = after
        self.calls = 0

    def point_residuals(self, points, camera, irls=False):
        self.calls += 1
        residuals = super().point_residuals(points, camera, irls)
        bad = self.poisoned & (self.calls > self.after)
        return torch.where(bad[:, None], torch.nan, residuals)

    def torso(self):
        return self


def test_sample_turning_nan_is_flagged_and_keeps_its_best_iterate(body, camera):
    truth = scene(2, seed=28)
    keypoints = exact_keypoints(body, truth, camera[:2])
    init = perturb(truth, seed=29)
    fitter = SMPLify(body, simple_gmm(), lm_config(torso_only=False))
    result = fitter.fit({"keypoints": NaNResiduals(keypoints, [1], 12, crop_size=224.0)},
                        camera[:2], init=init)
    clean = fitter.fit({"keypoints": NaNResiduals(keypoints[:1], [], 0, crop_size=224.0)},
                       camera[:1], init=subset(init, [0]))
    start = SMPLify(body, simple_gmm(), lm_config(0, torso_only=False)).fit(
        {"keypoints": NaNResiduals(keypoints, [], 0, crop_size=224.0)}, camera[:2], init=init)
    assert result.flags["nan"].tolist() == [False, True]
    assert torch.isfinite(result.params["body_pose"]).all()
    assert result.stages[0]["energy"][1] < start.stages[0]["energy"][1]
    for name in PARAMS:
        torch.testing.assert_close(result.params[name][:1], clean.params[name])


def test_terms_and_priors_without_residual_form_are_refused_by_name(body, camera):
    truth = scene(2, seed=30)
    keypoints = exact_keypoints(body, truth, camera[:2])
    with torch.no_grad():
        joints = body(**truth).joints
    points = torch.cat([joints, torch.ones_like(joints[..., :1])], dim=-1)
    terms = {"keypoints": KeypointsTerm(keypoints),
             "keypoints3d": Keypoints3DTerm(points, keypoint_set="smpl24")}
    with pytest.raises(ValueError, match="keypoints3d.*Keypoints3DTerm"):
        SMPLify(body, simple_gmm(), lm_config(2)).fit(terms, camera[:2], init=truth)
    with pytest.raises(ValueError, match="pose prior HalfLatent"):
        SMPLify(body, HalfLatent(), lm_config(2)).fit(terms["keypoints"], camera[:2], init=truth)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        StageConfig("body", ("body_pose",), optimizer="newton")


class OpaqueKeypoints(DataTerm):
    """The keypoints term behind the plain data-term interface (energy and residuals only):
    LM differentiates it by forward mode through the body instead of the structured path."""

    def __init__(self, inner: KeypointsTerm) -> None:
        self.inner = inner
        self.valid = inner.valid

    def energy(self, body_output, camera):
        return self.inner.energy(body_output, camera)

    def residuals(self, body_output, camera, irls=False):
        return self.inner.residuals(body_output, camera, irls)

    def estimate_transl(self, body_output, camera):
        return self.inner.estimate_transl(body_output, camera)

    def torso(self):
        return OpaqueKeypoints(self.inner.torso())


def test_a_term_with_only_residuals_fits_as_the_structured_path_does(body, camera):
    truth = scene(2, seed=31)
    keypoints = exact_keypoints(body, truth, camera[:2])
    init = perturb(truth, seed=32)
    fitter = SMPLify(body, simple_gmm(), lm_config(4))
    term = KeypointsTerm(keypoints, crop_size=224.0)
    structured = fitter.fit({"keypoints": term}, camera[:2], init=init)
    generic = fitter.fit({"opaque": OpaqueKeypoints(term)}, camera[:2], init=init)
    for name in PARAMS:
        torch.testing.assert_close(generic.params[name], structured.params[name])
    torch.testing.assert_close(generic.energy, structured.energy)


def test_lm_iteration_loop_never_reads_a_tensor_on_the_host(body, camera, monkeypatch):
    """As the Adam loop's test (test_fitting.py), around every LM stage's iterations, with the
    CPU-only early exit switched off (it is the loop's one host read, skipped on a GPU): the
    structured Jacobian, the damped solves, acceptance and the tracker read nothing."""
    import inspect

    from test_fitting import HOST_READS

    import fitkit.fitting.lm as lm

    monkeypatch.setattr(lm, "EARLY_EXIT_ON_CPU", False)
    truth = scene(2, seed=30)
    term = KeypointsTerm(exact_keypoints(body, truth, camera[:2]))
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}
    inner = lm.levenberg_marquardt
    calls = []

    def refuse(tensor, *args, **kwargs):
        raise AssertionError(f"host read in the LM loop from {inspect.stack()[1].function}")

    def guarded(*args, **kwargs):
        calls.append(1)
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, refuse)
        try:
            return inner(*args, **kwargs)
        finally:
            for name, original in originals.items():
                monkeypatch.setattr(torch.Tensor, name, original)

    monkeypatch.setattr(fitkit.fitting.smplify, "levenberg_marquardt", guarded)
    result = SMPLify(body, simple_gmm(), lm_config(3)).fit(term, camera[:2],
                                                          init=perturb(truth, seed=31))
    assert calls and result.ok.all()
