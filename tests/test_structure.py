"""The structure of fit and refine: terms registered from outside fitkit work in both, several
terms add up, the solver seam, sharded and torchrun refinement equal one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fitkit
from fitkit.eval import body_metrics
from fitkit.fitting import FitBatch, FitResult, SMPLify, Solver
from fitkit.geometry import Camera
from fitkit.io import read_params
from fitkit.refine import main as refine_main
from fitkit.synth import SynthConfig, generate_dataset
from fitkit.terms import TERMS

NUM = 4
FAST = ["--iterations", "4", "--overlays", "0", "--quiet"]

USER_TERM = '''
"""A user's own data term, outside fitkit: the projected pelvis against a 2D point."""
import numpy as np
import torch

from fitkit.terms import DataTerm, register_term


@register_term("pelvis2d")
class PelvisTerm(DataTerm):
    keyword = "pelvis2d"
    dataset_pattern = "pelvis/{name}.npy"

    @classmethod
    def read(cls, value, errors=None):
        if isinstance(value, (list, tuple)) and value and not np.isscalar(value[0]):
            rows = []
            for index, path in enumerate(value):
                try:
                    rows.append(np.load(path, allow_pickle=False))
                except OSError as error:
                    if errors is None:
                        raise
                    errors[index] = str(error)
                    rows.append(np.full(2, np.nan))
            return np.stack(rows).astype(np.float32)
        return np.asarray(value, dtype=np.float32).reshape(-1, 2)

    def __init__(self, points, weight=1.0):
        self.points = torch.as_tensor(points)
        self.valid = self.points.isfinite().all(dim=-1)
        self.weight = weight

    def energy(self, body_output, camera):
        projected = camera.project(body_output.joints[:, :1])[:, 0]
        error = (projected - torch.nan_to_num(self.points)).square().sum(dim=-1)
        return torch.where(self.valid, self.weight * error, 0.0)
'''


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 128 x 128 synthetic images with exact keypoints, plus each image's projected
    ground-truth pelvis in ``pelvis/NAME.npy`` (the user term's files)."""
    root = tmp_path_factory.mktemp("structure") / "data"
    generate_dataset(root, NUM, seed=3, config=SynthConfig(size=128, keypoint_noise="none"),
                     progress=False)
    gt = read_params(root / "gt.npz")
    body = fitkit.load_body("open")
    with torch.no_grad():
        joints = body(**{key: torch.as_tensor(gt[key])
                         for key in ("global_orient", "body_pose", "betas", "transl")}).joints
    camera = Camera(torch.as_tensor(gt["focal_length"]), torch.as_tensor(gt["camera_center"]),
                    torch.full((NUM, 2), 128.0))
    pelvis = camera.project(joints[:, :1])[:, 0].numpy()
    (root / "pelvis").mkdir()
    for name, point in zip(gt["image_names"], pelvis, strict=True):
        np.save(root / "pelvis" / f"{name}.npy", point)
    return root


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A module outside fitkit, on sys.path, that registers the term ``pelvis2d``."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "my_terms.py").write_text(textwrap.dedent(USER_TERM))
    sys.path.insert(0, str(folder))
    yield "my_terms"
    sys.path.remove(str(folder))
    TERMS.pop("pelvis2d", None)
    sys.modules.pop("my_terms", None)


def paths(root: Path, folder: str, suffix: str, count: int = NUM) -> list[Path]:
    return [root / folder / f"{i:06d}{suffix}" for i in range(count)]


def test_a_term_registered_outside_fitkit_works_in_fit_and_refine(
    dataset: Path, user_module: str, tmp_path: Path
) -> None:
    __import__(user_module)
    images, init = paths(dataset, "images", ".png"), dataset / "init.npz"
    pelvis = paths(dataset, "pelvis", ".npy")
    both = fitkit.fit(images, init=init, data_term=["keypoints", "pelvis2d"], prior=None,
                      keypoints=paths(dataset, "keypoints", "_keypoints.json"), pelvis2d=pelvis,
                      iterations=5)
    assert set(both.terms) >= {"keypoints", "pelvis2d"}
    assert torch.allclose(sum(both.terms.values()), both.energy)
    # the user term alone drives the fit: a target 8 px to the right pulls the pelvis there
    targets = np.stack([np.load(path) for path in pelvis]) + np.array([8.0, 0.0], np.float32)
    alone = fitkit.fit(images, init=init, data_term="pelvis2d", prior=None, pelvis2d=targets,
                       iterations=30, lr=0.02)
    camera = Camera(alone.params["focal_length"], alone.params["camera_center"],
                    torch.full((NUM, 2), 128.0))
    moved = camera.project(alone.joints[:, :1])[:, 0].numpy()
    assert np.abs(moved - targets).max() < 2.0 and not alone.flags["no_data"].any()
    with pytest.raises(fitkit.api.FitInputError, match="pelvis2d"):
        fitkit.fit(images, init=init, data_term="pelvis2d", prior=None)

    out = tmp_path / "out"
    args = ["--input", str(dataset), "--output", str(out), "--import", user_module,
            "--data-term", "keypoints,pelvis2d", *FAST]
    (dataset / "pelvis" / "000002.npy").rename(dataset / "pelvis" / "gone.npy")
    try:
        assert refine_main(args) == 0
    finally:
        (dataset / "pelvis" / "gone.npy").rename(dataset / "pelvis" / "000002.npy")
    results = read_params(out / "results.npz")
    assert "energy_pelvis2d" in results and "energy_keypoints" in results
    assert results["flag_bad_input"].tolist() == [False, False, True, False]
    assert "000002.npy" in str(results["error"][2])


class CountingSolver:
    """A solver behind the seam: SMPLify, counting the batches it saw."""

    def __init__(self, smplify: SMPLify) -> None:
        self.smplify = smplify
        self.batches: list[FitBatch] = []

    def solve(self, batch: FitBatch) -> FitResult:
        self.batches.append(batch)
        return self.smplify.solve(batch)


def test_fit_hands_a_fit_batch_to_the_solver(dataset: Path) -> None:
    fitter = fitkit.api.Fitter(["keypoints", "densepose"], None, iterations=2)
    solver = CountingSolver(fitter.solver)
    assert isinstance(solver, Solver)
    fitter.solver = solver
    gt = read_params(dataset / "gt.npz")
    from fitkit.terms import DensePoseTerm, KeypointsTerm

    keypoints = KeypointsTerm.read(paths(dataset, "keypoints", "_keypoints.json"))
    iuv = DensePoseTerm.read(paths(dataset, "densepose", "_IUV.png"))
    init = {key: gt[key] for key in ("betas", "global_orient", "focal_length", "camera_center")}
    result = fitter(np.full((NUM, 2), 128), init, keypoints=keypoints, iuv=iuv)
    batch, = solver.batches
    assert set(batch.observations) == {"keypoints", "densepose"} and batch.groups == ()
    assert torch.equal(batch.init["betas"], torch.as_tensor(gt["betas"]))
    assert result.params["body_pose"].shape == (NUM, 69)


def test_keypoints_and_densepose_together_beat_either_alone(tmp_path: Path) -> None:
    """With detector-like keypoints (the realistic case) each term helps the other."""
    count = 8
    dataset = generate_dataset(tmp_path / "data", count, seed=3,
                               config=SynthConfig(size=128, keypoint_noise="detector"),
                               progress=False)
    images, init = paths(dataset, "images", ".png", count), dataset / "init.npz"
    inputs = {"keypoints": paths(dataset, "keypoints", "_keypoints.json", count),
              "iuv": paths(dataset, "densepose", "_IUV.png", count)}
    gt = read_params(dataset / "gt.npz")
    body = fitkit.load_body("open")

    keys = ("global_orient", "body_pose", "betas", "transl")
    with torch.no_grad():
        truth = body(**{key: torch.as_tensor(gt[key]) for key in keys})

    def pve(result: FitResult) -> float:
        return float(body_metrics(result.joints, truth.joints, result.vertices,
                                  truth.vertices)["pve"].mean())

    errors = {}
    for terms in (["keypoints"], ["densepose"], ["keypoints", "densepose"]):
        given = {key: value for key, value in inputs.items()
                 if key in ("keypoints" if term == "keypoints" else "iuv" for term in terms)}
        result = fitkit.fit(images, init=init, data_term=terms, prior="gmm", iterations=50,
                            **given)
        errors["+".join(terms)] = pve(result)
    assert errors["keypoints+densepose"] < min(errors["keypoints"], errors["densepose"]), errors


def run_refine(dataset: Path, out: Path, *extra: str) -> dict[str, np.ndarray]:
    assert refine_main(["--input", str(dataset), "--output", str(out), "--batch-size", "1",
                        *FAST, *extra]) == 0
    return read_params(out / "results.npz")


def test_shards_give_the_results_of_one_process(dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    single = run_refine(dataset, tmp_path / "single")
    out = tmp_path / "sharded"
    assert refine_main(["--input", str(dataset), "--output", str(out), "--batch-size", "1",
                        *FAST, "--shard", "0/2"]) == 0
    assert "2 of 4 rows done" in capsys.readouterr().out
    assert not (out / "results.npz").exists()
    assert sorted(p.name for p in (out / "parts").iterdir()) == [
        "rows_000000-000001.npz", "rows_000002-000003.npz"]
    sharded = run_refine(dataset, out, "--shard", "1/2")  # the last shard writes the results
    for key, value in single.items():
        if value.dtype.kind == "f":
            assert np.abs(value - sharded[key]).max() <= 1e-5, key
        else:
            assert np.array_equal(value, sharded[key]), key
    assert (out / "metrics.json").is_file()
    assert refine_main(["--input", str(dataset), "--output", str(out), "--shard", "2/2"]) == 2


@pytest.mark.skipif(shutil.which("torchrun") is None and not (
    Path(sys.executable).parent / "torchrun").exists(), reason="torchrun not installed")
def test_torchrun_ranks_give_the_results_of_one_process(dataset: Path, tmp_path: Path) -> None:
    single = run_refine(dataset, tmp_path / "single")
    out = tmp_path / "torchrun"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", "29571", "-m", "fitkit.refine", "--input", str(dataset), "--output",
         str(out), "--batch-size", "1", "--device", "cpu", *FAST],
        capture_output=True, text=True, env=env, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ranked = read_params(out / "results.npz")
    for key, value in single.items():
        if value.dtype.kind == "f":
            assert np.abs(value - ranked[key]).max() <= 1e-5, key
        else:
            assert np.array_equal(value, ranked[key]), key


class ContextPrior(fitkit.priors.PosePrior):
    """A conditional prior that pulls the pose towards its context, recording what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[torch.Tensor | None] = []

    def energy(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        self.contexts.append(context)
        return (body_pose - context).square().sum(dim=-1)


def test_fit_hands_the_context_to_a_conditional_prior_and_reuses_its_fitter(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, init = paths(dataset, "images", ".png"), dataset / "init.npz"
    keypoints = paths(dataset, "keypoints", "_keypoints.json")
    prior = ContextPrior()
    target = torch.zeros(NUM, 69)
    target[:, 50] = 0.7  # bend one joint; the prior alone pulls towards it
    result = fitkit.fit(images, init=init, keypoints=keypoints, prior=prior,
                        prior_context=target, iterations=30, lr=0.05, data_weight=[1.0, 0.0],
                        pose_prior_weight=[0.0, 1.0])
    assert prior.contexts and all(torch.equal(c, target) for c in prior.contexts)
    assert (result.params["body_pose"][:, 50] > 0.3).all()

    loads = []
    original = fitkit.fitter.load_body
    monkeypatch.setattr(fitkit.fitter, "load_body",
                        lambda *a, **k: loads.append(1) or original(*a, **k))
    for _ in range(2):
        fitkit.fit(images, init=init, keypoints=keypoints, prior=None, iterations=1,
                   preset="spin")
    assert len(loads) == 1  # the second call reused the first call's body


def test_each_sample_starts_from_the_translation_of_a_term_that_has_its_data() -> None:
    from fitkit.fitting import preset
    from fitkit.terms import KeypointsTerm

    body = fitkit.load_body("open")
    camera = Camera.default(torch.tensor([[256.0, 256.0]] * 2))
    truth = {"global_orient": torch.tensor([[np.pi, 0.0, 0.0]] * 2),
             "transl": torch.tensor([[0.2, 0.1, 6.0], [-0.3, 0.0, 4.0]])}
    with torch.no_grad():
        points = camera.project(body(**truth).keypoints("openpose25"))
    keypoints = torch.cat([points, torch.ones(2, 25, 1)], dim=-1)
    first, second = keypoints.clone(), keypoints.clone()
    first[1] = float("nan")  # the first term sees only sample 0, the second only sample 1
    second[0] = float("nan")
    terms = {"a": KeypointsTerm(first), "b": KeypointsTerm(second)}
    smplify = SMPLify(body, None, preset("refine").with_stages(iterations=0))
    result = smplify.fit(terms, camera, {"global_orient": truth["global_orient"]})
    alone = [SMPLify(body, None, smplify.config).fit({"a": term}, camera,
                                                     {"global_orient": truth["global_orient"]})
             for term in (KeypointsTerm(keypoints[:1].expand(2, -1, -1)),
                          KeypointsTerm(keypoints[1:].expand(2, -1, -1)))]
    assert torch.allclose(result.params["transl"][0], alone[0].params["transl"][0])
    assert torch.allclose(result.params["transl"][1], alone[1].params["transl"][1])
    assert torch.allclose(result.params["transl"], truth["transl"], atol=0.05)


def test_a_finished_refine_leaves_gradients_on(dataset: Path, tmp_path: Path) -> None:
    run_refine(dataset, tmp_path / "out", "--limit", "2")  # metrics: two body generators
    assert torch.is_grad_enabled()
