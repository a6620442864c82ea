"""Guards of the SMPLify core: every weight enters the objective squared, results are the best
iterate, a failing sample is frozen on its best iterate without touching the others, and init
rows are picked by image name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fitting import DTYPE, exact_keypoints, perturb, scene, simple_gmm, stick_body

from fitkit.fitting import FitConfig, SMPLify, zip_stages
from fitkit.geometry import Camera
from fitkit.io import write_params
from fitkit.io.inputs import read_init
from fitkit.priors import bending_energy
from fitkit.terms import KeypointsTerm

PARAMS = ("global_orient", "body_pose", "betas", "transl")


@pytest.fixture(scope="module")
def body():
    return stick_body()


def camera(batch: int) -> Camera:
    return Camera.from_image_size(1000, 1000, batch_size=batch, dtype=DTYPE)


def body_params(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: params[name] for name in PARAMS}


class Recorded(KeypointsTerm):
    """Keypoints that record sample 1 at every evaluation (its energy and joints; a fit evaluates
    only the vertices its terms read) and, from evaluation ``after`` on, make its energy NaN
    (``mode="nan"``) or a million times larger (``mode="diverge"``)."""

    def __init__(self, keypoints, mode: str | None = None, after: int = 0, **options) -> None:
        super().__init__(keypoints, **options)
        self.mode = mode
        self.after = after
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def energy(self, body_output, camera):
        energy = super().energy(body_output, camera)
        failing = self.mode is not None and len(self.seen) >= self.after
        self.seen.append((energy[1].detach().clone(), body_output.joints[1].detach().clone()))
        if not failing:
            return energy
        bad = torch.full_like(energy, torch.nan) if self.mode == "nan" else 1e6 * energy
        return torch.where(torch.arange(len(energy)) == 1, bad, energy)

    def torso(self):
        return self


def test_every_weight_enters_the_objective_squared(body):
    """Reported energies (per stage and in the result) are the weights squared times the
    unweighted energies at the returned parameters, and they sum to the total."""
    truth = scene(2, seed=20)
    cam = camera(2)
    term = KeypointsTerm(exact_keypoints(body, truth, cam), crop_size=224.0)
    init = perturb(truth, seed=21)
    prior = simple_gmm()
    config = FitConfig(
        stages=zip_stages(
            ("start", "fit"),
            (("global_orient", "transl"), PARAMS),
            iterations=[0, 4],
            data_weight=[2.0, 0.5],
            pose_prior_weight=[3.0, 0.7],
            shape_prior_weight=[0.0, 4.0],
            bending_weight=[0.0, 1.2],
            depth_weight=[0.0, 6.0],
        ),
        term_weights={"keypoints": 3.0},
    )
    result = SMPLify(body, prior, config).fit({"keypoints": term}, cam, init=init)
    start = result.stages[0]["terms"]
    assert set(start) == {"keypoints", "pose_prior"}
    torch.testing.assert_close(start["keypoints"], 6.0**2 * term.energy(body(**init), cam))
    torch.testing.assert_close(start["pose_prior"], 3.0**2 * prior.energy(init["body_pose"]))

    params = result.params
    terms = result.terms
    unweighted = {
        "keypoints": term.energy(body(**body_params(params)), cam),
        "pose_prior": prior.energy(params["body_pose"]),
        "shape_prior": params["betas"].square().sum(dim=-1),
        "bending": bending_energy(params["body_pose"]),
        "depth": (params["transl"][:, 2] - init["transl"][:, 2]).square(),
    }
    weights = {"keypoints": 1.5, "pose_prior": 0.7, "shape_prior": 4.0, "bending": 1.2,
               "depth": 6.0}
    assert set(terms) == set(weights)
    for name, weight in weights.items():
        assert (unweighted[name] > 0).all(), name
        torch.testing.assert_close(terms[name], weight**2 * unweighted[name])
    torch.testing.assert_close(result.energy, torch.stack(list(terms.values())).sum(dim=0))


def test_result_is_the_best_iterate_not_the_last(body):
    """Adam with a step far too large for the last iterations: the energy goes down, then up;
    the result holds the lowest energy seen and the parameters that gave it."""
    truth = scene(2, seed=22)
    cam = camera(2)
    term = Recorded(exact_keypoints(body, truth, cam), crop_size=224.0)
    config = FitConfig(stages=zip_stages(("fit",), (PARAMS,), iterations=12, lr=0.05))
    result = SMPLify(body, None, config).fit({"keypoints": term}, cam, init=perturb(truth, 23))
    energies = torch.stack([energy for energy, _ in term.seen])
    best = int(energies.argmin())
    assert energies[-1] > energies[best] and best > 0
    torch.testing.assert_close(result.energy[1], energies[best])
    torch.testing.assert_close(result.joints[1], term.seen[best][1])


def test_the_iterate_after_the_last_step_counts(body):
    """One Adam step: the fit keeps where the step went (it is better than the start)."""
    truth = scene(2, seed=26)
    cam = camera(2)
    term = KeypointsTerm(exact_keypoints(body, truth, cam), crop_size=224.0)
    init = perturb(truth, seed=27)
    config = FitConfig(stages=zip_stages(("fit",), (PARAMS,), iterations=1))
    result = SMPLify(body, None, config).fit({"keypoints": term}, cam, init=init)
    assert (result.energy < term.energy(body(**init), cam)).all()
    for name in PARAMS:
        assert (result.params[name] != init[name]).any(dim=-1).all(), name


@pytest.mark.parametrize(
    ("mode", "after", "flag"), [("nan", 5, "nan"), ("diverge", 1, "diverged")]
)
def test_failing_sample_is_frozen_on_its_best_iterate_and_the_other_fits_as_if_alone(
    body, mode, after, flag
):
    """Sample 1 fails at evaluation ``after`` (mid-fit, or at the first step: it never
    improved). Every later evaluation sees it back on its best iterate, the result holds that
    iterate and flags it; sample 0 ends exactly where it ends when fitted alone."""
    truth = scene(2, seed=24)
    cam = camera(2)
    keypoints = exact_keypoints(body, truth, cam)
    init = perturb(truth, seed=25)
    config = FitConfig(stages=zip_stages(("first", "second"), (PARAMS, PARAMS), iterations=8))
    term = Recorded(keypoints, mode, after, crop_size=224.0)
    result = SMPLify(body, None, config).fit({"keypoints": term}, cam, init=init)

    assert result.flags[flag].tolist() == [False, True]
    assert not (result.flags["nan"] & result.flags["diverged"]).any()
    energies = torch.stack([energy for energy, _ in term.seen[:after]])
    best = term.seen[int(energies.argmin())][1]
    assert len(term.seen) > after + 5
    for _, joints in term.seen[after + 1 :]:
        torch.testing.assert_close(joints, best)
    torch.testing.assert_close(result.joints[1], best)
    if after == 1:  # failed before its first step: it keeps its initial parameters exactly
        for name in PARAMS:
            torch.testing.assert_close(result.params[name][1], init[name][1], rtol=0, atol=0)

    alone = SMPLify(body, None, config).fit(
        {"keypoints": KeypointsTerm(keypoints[:1], crop_size=224.0)},
        cam[:1],
        init={name: value[:1] for name, value in init.items()},
    )
    for name in PARAMS:
        torch.testing.assert_close(result.params[name][:1], alone.params[name])
    torch.testing.assert_close(result.energy[:1], alone.energy)


def test_init_rows_are_picked_by_image_name(tmp_path):
    names = ["walk", "jump", "sit"]
    rows = np.arange(3, dtype=np.float32)[:, None]
    params = {
        "image_names": np.array(names),
        "global_orient": np.tile(rows, (1, 3)),
        "body_pose": np.tile(rows, (1, 69)),
        "betas": np.tile(rows, (1, 10)),
        "transl": np.tile(rows, (1, 3)),
        "focal_length": np.tile(rows, (1, 2)),
        "camera_center": np.tile(rows, (1, 2)),
    }
    write_params(tmp_path / "init.npz", params)
    for wanted in (["sit", "walk", "jump"], ["jump"], ["sit", "sit"]):
        picked = read_init(tmp_path / "init.npz", names=wanted)
        expected = np.array([names.index(name) for name in wanted], dtype=np.float32)
        assert set(picked) == set(params) - {"image_names"}
        for key, value in picked.items():
            np.testing.assert_array_equal(value[:, 0], expected, err_msg=key)
            assert (value == value[:, :1]).all()
    from_dict = read_init({**params, "global_orient": torch.as_tensor(params["global_orient"])},
                          names=["sit", "walk"])
    np.testing.assert_array_equal(from_dict["global_orient"][:, 0], [2.0, 0.0])
