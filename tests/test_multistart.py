"""Fitting from scratch: several global-orientation starts in one batch, the best kept."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import fitkit
from fitkit.fitting import FitBatch, FitResult, SMPLify
from fitkit.fitting.multistart import ORIENTATIONS, MultiStart, take_result, turned_orientations
from fitkit.fitting.settings import fit_config
from fitkit.geometry import Camera, axis_angle_to_matrix
from fitkit.io import read_params
from fitkit.priors import load as load_prior
from fitkit.refine import main as refine_main
from fitkit.synth import SynthConfig, generate_dataset


def facing(orient: torch.Tensor) -> torch.Tensor:
    """``(N,)`` z of the body's forward axis (its +z) in the camera frame (< 0: towards the
    camera)."""
    return axis_angle_to_matrix(orient)[..., 2, 2]


def test_orientations_face_as_named() -> None:
    orient = turned_orientations(list(ORIENTATIONS.values()), dtype=torch.float64)
    assert torch.allclose(orient[0], torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64))
    forward = facing(orient)
    assert forward[0] == pytest.approx(-1.0)  # facing the camera
    assert forward[1] == pytest.approx(1.0)  # turned away
    assert forward[2:].abs().max() < 1e-9  # profiles
    up = axis_angle_to_matrix(orient)[..., :, 1]  # the body's up axis stays the camera's -y
    assert torch.allclose(up, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64).expand(4, 3),
                          atol=1e-9)


class OrientationSolver:
    """A fake solver: energy = distance of each row's start to its sample's target
    orientation; counts the rows it was given."""

    def __init__(self, targets: torch.Tensor, nan_rows: tuple[int, ...] = ()) -> None:
        self.targets, self.nan_rows, self.rows = targets, nan_rows, []

    def solve(self, batch: FitBatch) -> FitResult:
        count = batch.batch_size
        self.rows.append(count)
        sample = batch.observations["keypoints"][:, 0, 0].long()
        orient = batch.init["global_orient"]
        energy = (axis_angle_to_matrix(orient) - axis_angle_to_matrix(
            self.targets[sample])).flatten(1).norm(dim=1)
        flags = {"nan": torch.zeros(count, dtype=torch.bool)}
        for row in self.nan_rows:
            flags["nan"][row] = True
        pose = batch.init.get("body_pose", torch.zeros(count, 69))
        params = {"global_orient": orient, "body_pose": pose,
                  "betas": torch.zeros(count, 10), "transl": torch.zeros(count, 3)}
        return FitResult(params=params, vertices=torch.zeros(count, 5, 3),
                         joints=orient[:, None].expand(count, 24, 3), energy=energy,
                         terms={"keypoints": energy}, stages=[{"energy": energy, "terms": {}}],
                         flags=flags, timings={"total": 0.0},
                         errors=[f"row {row}" for row in range(count)])


def fake_batch(count: int) -> FitBatch:
    keypoints = torch.arange(count, dtype=torch.float32)[:, None, None].expand(count, 25, 3)
    return FitBatch({"keypoints": keypoints.clone()}, Camera.from_image_size(64, 64, count))


def test_each_sample_keeps_its_best_start_from_one_batch() -> None:
    turns = [0.0, 180.0, 90.0, -90.0]
    starts = turned_orientations(turns)
    targets = starts[[1, 3, 0, 2, 1]]  # sample b's true start
    solver = OrientationSolver(targets)
    pose = torch.full((69,), 0.1)
    result = MultiStart(solver, turns=turns, body_pose=pose).solve(fake_batch(5))
    assert solver.rows == [20]  # one batch of starts x samples
    assert torch.allclose(result.params["global_orient"], targets, atol=1e-6)
    assert torch.allclose(result.params["body_pose"], pose.expand(5, 69))
    assert result.energy.max() < 1e-5
    assert result.timings["starts"] == 4
    # the picked rows are start * B + b: their own row's message comes along
    assert result.errors == [f"row {row}" for row in (5, 16, 2, 13, 9)]


def test_a_failed_start_is_never_kept_when_another_finished() -> None:
    turns = [0.0, 180.0]
    targets = turned_orientations(turns)[[0, 0]]
    # sample 0's best start (row 0) turned NaN: the other start wins
    result = MultiStart(OrientationSolver(targets, nan_rows=(0,)), turns=turns).solve(
        fake_batch(2))
    assert facing(result.params["global_orient"][0]) > 0.99
    assert facing(result.params["global_orient"][1]) < -0.99
    assert not result.flags["nan"].any()


def test_given_orientation_passes_through() -> None:
    solver = OrientationSolver(turned_orientations([0.0, 0.0]))
    batch = fake_batch(2)
    batch.init = {"global_orient": turned_orientations([30.0, 60.0]),
                  "body_pose": torch.zeros(2, 69)}
    result = MultiStart(solver).solve(batch)
    assert solver.rows == [2]
    assert torch.allclose(result.params["global_orient"], batch.init["global_orient"])


def test_take_result_takes_every_per_sample_field() -> None:
    batch = fake_batch(3)
    batch.init = {"global_orient": turned_orientations([0.0, 90.0, 180.0])}
    result = OrientationSolver(turned_orientations([0.0, 0.0, 0.0])).solve(batch)
    rows = torch.tensor([2, 0])
    taken = take_result(result, rows)
    assert torch.equal(taken.energy, result.energy[rows])
    assert torch.equal(taken.params["global_orient"], result.params["global_orient"][rows])
    assert torch.equal(taken.stages[0]["energy"], result.stages[0]["energy"][rows])
    assert taken.errors == ["row 2", "row 0"]


def test_typical_poses_of_the_open_priors() -> None:
    gmm = load_prior("gmm")
    assert torch.equal(gmm.typical_pose(2)[1], gmm.means[gmm.weights.argmax()])
    for name in ("vposer", "cnf"):
        prior = load_prior(name)
        pose = prior.typical_pose(3)
        assert pose.shape == (3, 69)
        # the decoded zero latent is more typical than the rest pose (arms out, T-pose)
        assert prior.energy(pose[:1]) < prior.energy(torch.zeros(1, 69)) + 5.0
        with torch.no_grad():
            decoded = prior.decode(torch.zeros(1, prior.latent_dim))
        assert torch.allclose(pose, decoded.expand(3, 69))


@pytest.fixture(scope="module")
def body() -> fitkit.body.BodyModel:
    return fitkit.load_body("open")


def exact_keypoints(body: fitkit.body.BodyModel, orient: torch.Tensor, pose: torch.Tensor,
                    camera: Camera) -> torch.Tensor:
    with torch.no_grad():
        output = body(global_orient=orient, body_pose=pose, betas=torch.zeros(len(orient), 10),
                      transl=torch.tensor([[0.0, 0.2, 5.0]]).expand(len(orient), 3))
        points = camera.project(output.keypoints("openpose25"))
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


def test_a_body_turned_away_is_fitted_turned_away(body: fitkit.body.BodyModel) -> None:
    """Exact keypoints of a body seen from behind: the single start facing the camera stays
    facing it (mirrored), the multi-start fit turns round; each sample of the batch gets what
    it gets alone."""
    prior = load_prior("gmm")
    orient = turned_orientations([170.0, 10.0])
    pose = prior.typical_pose(2)
    camera = Camera.from_image_size(256, 256, 2)
    keypoints = exact_keypoints(body, orient, pose, camera)
    config = fit_config("scratch", iterations=6)
    typical = prior.typical_pose()[0]
    solver = MultiStart(SMPLify(body, prior, config), body_pose=typical)
    both = solver.solve(FitBatch({"keypoints": keypoints}, camera))
    assert facing(both.params["global_orient"][0]) > 0.8  # away
    assert facing(both.params["global_orient"][1]) < -0.8  # facing
    alone = solver.solve(FitBatch({"keypoints": keypoints[:1]}, camera[torch.tensor([0])]))
    assert torch.allclose(alone.params["global_orient"], both.params["global_orient"][:1],
                          atol=1e-4)
    single = MultiStart(SMPLify(body, prior, config), turns=[0.0], body_pose=typical)
    facing_only = single.solve(FitBatch({"keypoints": keypoints[:1]},
                                        camera[torch.tensor([0])]))
    assert facing(facing_only.params["global_orient"][0]) < 0.0
    assert facing_only.energy[0] > both.energy[0]


def test_fit_without_init_starts_from_scratch(body: fitkit.body.BodyModel) -> None:
    """``fitkit.fit`` with no init uses the scratch preset's multi-start solver; with an
    initial global orientation the refine preset's single fit."""
    prior = load_prior("gmm")
    orient = turned_orientations([175.0])
    camera = Camera.from_image_size(256, 256, 1)
    keypoints = exact_keypoints(body, orient, prior.typical_pose(1), camera).numpy()
    image = np.zeros((256, 256, 3), dtype=np.uint8)
    result = fitkit.fit(image, keypoints=keypoints, iterations=5, body=body, device="cpu")
    assert result.timings["starts"] == len(ORIENTATIONS)
    assert facing(result.params["global_orient"][0]) > 0.8
    given = fitkit.fit(image, keypoints=keypoints, iterations=5, body=body, device="cpu",
                       init={"global_orient": turned_orientations([0.0]).numpy()})
    assert "starts" not in given.timings
    assert [stage for stage in given.timings if stage != "total"][:2] == ["camera", "body"]


def test_refine_a_folder_without_init_fits_from_scratch(tmp_path: Path) -> None:
    """A dataset folder without ``init.npz``: the images are the rows, fitted from scratch,
    with ground-truth metrics and overlays (which then have no initial body to show)."""
    data = generate_dataset(tmp_path / "data", 3, seed=2, config=SynthConfig(size=96),
                            progress=False)
    (data / "init.npz").unlink()
    (data / "images" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert refine_main(["--input", str(data), "--output", str(out), "--iterations", "4",
                        "--overlays", "1", "--quiet"]) == 0
    results = read_params(out / "results.npz")
    names = sorted(path.stem for path in (data / "images").glob("*.png"))
    assert results["image_names"].tolist() == names
    assert np.isfinite(results["body_pose"]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preset"] == "scratch" and set(metrics["refined"]) >= {"mpjpe", "pa_mpjpe"}
    assert "init" not in metrics
    assert len(list((out / "overlays").iterdir())) == 1
    (data / "images" / f"{names[0]}.jpg").write_bytes(b"")
    assert refine_main(["--input", str(data), "--output", str(tmp_path / "again"),
                        "--quiet"]) == 2  # one image name, two files
