"""Pose and shape priors: energies against independent computations, the official file layouts,
exact flow maps, and the open defaults telling plausible from implausible poses."""

import math
import pickle

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import multivariate_normal

from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.io.npz import FileKeyError
from fitkit.priors import (
    CNFPrior,
    GMMPrior,
    VPoserPrior,
    VPoserV2,
    bending_energy,
    fit_gmm,
    load,
    shape_energy,
)
from fitkit.priors.cnf import ConditionalFlow
from fitkit.synth.poses import (
    body_pose_from_components,
    motion_components,
    sample_body_pose,
    twist_beyond_limits,
)
from fitkit.train import priors as train
from fitkit.train.__main__ import main

# The parameter names of human_body_prior's VPoser v2, as they appear in its checkpoints.
VPOSER_V2_KEYS = sorted(
    [f"encoder_net.{i}.{p}" for i in (1, 4)
     for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    + [f"encoder_net.{i}.{p}" for i in (2, 6, 7) for p in ("weight", "bias")]
    + [f"encoder_net.8.{h}.{p}" for h in ("mu", "logvar") for p in ("weight", "bias")]
    + [f"decoder_net.{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")]
)


def random_spd(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    a = rng.normal(size=(k, d, d)) * 0.1
    return a @ a.transpose(0, 2, 1) + 0.05 * np.eye(d)


def write_official_gmm(path, means, covars, weights) -> None:
    """The official layout: a (Python 2 era) pickle of a dict of float64 arrays."""
    with open(path, "wb") as f:
        pickle.dump({"means": means, "covars": covars, "weights": weights}, f, protocol=2)


def roc_auc(plausible: torch.Tensor, implausible: torch.Tensor) -> float:
    """P(energy of an implausible pose > energy of a plausible one), by the rank-sum formula."""
    scores = torch.cat([plausible, implausible]).double()
    ranks = scores.argsort().argsort().double() + 1.0
    n0, n1 = len(plausible), len(implausible)
    return float((ranks[n0:].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


# --- GMM ---------------------------------------------------------------------------------------

def test_gmm_energy_matches_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    k, d = 8, 69
    means = rng.normal(size=(k, d)) * 0.3
    covars = random_spd(rng, k, d)
    weights = rng.dirichlet(np.ones(k))
    write_official_gmm(tmp_path / "gmm_08.pkl", means, covars, weights)
    prior = load(tmp_path / "gmm_08.pkl").double()
    assert isinstance(prior, GMMPrior)

    x = means[rng.integers(k, size=16)] + rng.normal(size=(16, d)) * 0.2
    # SMPLify: min_k [-log w_k - log N(x; mu_k, S_k)] with det normalized by the smallest one.
    neg_log = np.stack([-np.log(w) - multivariate_normal(m, c).logpdf(x)
                        for m, c, w in zip(means, covars, weights, strict=True)], axis=1)
    min_half_logdet = 0.5 * min(np.linalg.slogdet(c)[1] for c in covars)
    expected = neg_log.min(axis=1) - min_half_logdet
    energy = prior.energy(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(energy, expected, rtol=1e-5)


def test_gmm_pickle_round_trip_keeps_the_official_layout(tmp_path):
    rng = np.random.default_rng(1)
    prior = GMMPrior(rng.normal(size=(8, 69)), random_spd(rng, 8, 69), rng.dirichlet(np.ones(8)))
    prior.save_pickle(tmp_path / "out.pkl")
    with open(tmp_path / "out.pkl", "rb") as f:
        data = pickle.load(f, encoding="latin1")
    assert sorted(data) == ["covars", "means", "weights"]
    assert data["means"].shape == (8, 69) and data["covars"].shape == (8, 69, 69)
    assert data["weights"].shape == (8,) and data["means"].dtype == np.float64
    x = torch.randn(5, 69)
    assert torch.allclose(load(tmp_path / "out.pkl").energy(x), prior.energy(x))


def test_gmm_pickle_without_a_key_fails_clearly(tmp_path):
    path = tmp_path / "gmm_08.pkl"
    with open(path, "wb") as f:
        pickle.dump({"means": np.zeros((8, 69)), "weights": np.ones(8) / 8}, f, protocol=2)
    with pytest.raises(FileKeyError, match=r"gmm_08\.pkl: key 'covars': missing"):
        load(path)


def test_em_recovers_a_known_mixture():
    gen = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    scales = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.3, 0.0], [0.0, 1.0]],
                           [[0.7, 0.0], [-0.2, 0.4]]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    n = 6000
    label = torch.multinomial(weights, n, replacement=True, generator=gen)
    noise = torch.randn(n, 2, 1, generator=gen, dtype=torch.float64)
    x = means[label] + (scales[label] @ noise).squeeze(-1)

    fitted = fit_gmm(x, num_components=3, iterations=150, reg_covar=1e-6, generator=gen)
    order = torch.cdist(means, fitted.means.double()).argmin(dim=1)
    assert sorted(order.tolist()) == [0, 1, 2]
    assert torch.allclose(fitted.means.double()[order], means, atol=0.1)
    assert torch.allclose(fitted.weights.double()[order], weights, atol=0.03)
    assert torch.allclose(fitted.covars.double()[order], scales @ scales.transpose(1, 2),
                          atol=0.1)


# --- VPoser ------------------------------------------------------------------------------------

def randomized_vposer(seed: int) -> VPoserV2:
    torch.manual_seed(seed)
    model = VPoserV2()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.3)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model.eval()


def write_v2_folder(folder, state: dict, epoch: int = 5) -> None:
    """A VPoser v2 experiment folder as human_body_prior's trainer leaves it."""
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    config = {"general": {"expr_id": "V02_05"}, "model_params": {"num_neurons": 512, "latentD": 32}}
    (folder / "V02_05.yaml").write_text(yaml.safe_dump(config))
    state_dict = {f"vp_model.{k}": v for k, v in state.items()}
    state_dict["bm_train.init_v_template"] = torch.zeros(10, 3)  # the trainer's body model
    torch.save({"epoch": epoch, "global_step": 100 * epoch, "state_dict": state_dict},
               folder / "snapshots" / f"V02_05_epoch={epoch:02d}_val_loss=0.03.ckpt")


def test_vposer_module_has_the_v2_key_names():
    assert sorted(VPoserV2().state_dict()) == VPOSER_V2_KEYS


def test_vposer_v2_folder_loads_and_decodes_like_its_module(tmp_path):
    model = randomized_vposer(0)
    write_v2_folder(tmp_path, randomized_vposer(1).state_dict(), epoch=1)
    write_v2_folder(tmp_path, model.state_dict(), epoch=5)  # the newest snapshot wins
    prior = load(tmp_path)
    assert isinstance(prior, VPoserPrior)

    z = torch.randn(7, 32)
    with torch.no_grad():
        expected = model.decode(z)
        decoded = prior.decode(z)
    assert torch.equal(prior.model.decode(z), expected)
    assert decoded.shape == (7, 69) and torch.equal(decoded[:, 63:], torch.zeros(7, 6))
    pose = sample_body_pose(7, torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = model.encode(pose[:, :63]).mean
    assert torch.allclose(prior.encode(pose), mean)
    assert torch.allclose(prior.latent_energy(mean), mean.square().sum(-1))
    rotations = axis_angle_to_matrix(pose[:, :63].reshape(7, 21, 3))
    with torch.no_grad():
        off_manifold = (model.decode(mean) - rotations).square().sum((1, 2, 3))
        energy = prior.energy(pose)
    assert torch.allclose(energy, mean.square().sum(-1) + 100.0 * off_manifold, rtol=1e-5)


@pytest.mark.parametrize("change", ["missing", "renamed"])
def test_vposer_folder_with_wrong_keys_fails_clearly(tmp_path, change):
    state = randomized_vposer(0).state_dict()
    weight = state.pop("encoder_net.8.mu.weight")
    if change == "renamed":
        state["encoder_net.8.mean.weight"] = weight
    write_v2_folder(tmp_path, state)
    with pytest.raises(FileKeyError) as error:
        load(tmp_path)
    message = str(error.value)
    assert "V02_05_epoch=05" in message and "encoder_net.8.mu.weight" in message
    assert ("encoder_net.8.mean.weight" in message) == (change == "renamed")


def test_vposer_latent_optimization_has_gradients():
    prior = VPoserPrior(randomized_vposer(0))
    z = torch.zeros(3, 32, requires_grad=True)
    (prior.decode(z).square().sum() + prior.latent_energy(z).sum()).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# --- cNF ---------------------------------------------------------------------------------------

def randomize(module: torch.nn.Module, scale: float, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize("context_dim", [0, 3])
def test_flow_log_prob_is_the_change_of_variables_formula(context_dim):
    flow = ConditionalFlow(6, context_dim, num_layers=3, hidden=8, num_blocks=1).double()
    randomize(flow, 0.3, 0)
    x = torch.randn(4, 6, dtype=torch.float64)
    context = torch.randn(4, context_dim, dtype=torch.float64) if context_dim else None
    log_prob = flow.log_prob(x, context)
    for i in range(4):
        ctx = None if context is None else context[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, c=ctx: flow(v[None], c)[0][0], x[i])
        z = flow(x[i : i + 1], ctx)[0][0]
        expected = (-0.5 * z.square().sum() - 3.0 * math.log(2.0 * math.pi)
                    + torch.linalg.slogdet(jac)[1])
        assert torch.allclose(log_prob[i], expected, atol=1e-10)
        assert torch.allclose(flow.inverse(z[None], ctx)[0], x[i], atol=1e-10)


@pytest.mark.parametrize("context_dim", [0, 5])
def test_cnf_pose_latent_pose_is_the_identity(context_dim):
    prior = CNFPrior(context_dim=context_dim, num_layers=2, hidden=16).double()
    randomize(prior, 0.05, 1)
    pose = sample_body_pose(32, torch.Generator().manual_seed(0), dtype=torch.float64)
    context = torch.randn(32, context_dim, dtype=torch.float64) if context_dim else None
    back = prior.decode(prior.encode(pose, context), context)
    assert (back - pose).abs().max() < 1e-5
    assert prior.sample(4, None if context is None else context[:4]).shape == (4, 69)


def test_cnf_folder_round_trip_and_context_checks(tmp_path):
    prior = CNFPrior(context_dim=4, num_layers=2, hidden=16, energy_offset=1.5)
    randomize(prior, 0.05, 2)
    prior.save_folder(tmp_path / "flow")
    loaded = load(tmp_path / "flow")
    assert isinstance(loaded, CNFPrior) and loaded.context_dim == 4
    pose, context = torch.randn(3, 69) * 0.3, torch.randn(3, 4)
    assert torch.allclose(loaded.energy(pose, context), -prior.log_prob(pose, context) - 1.5)
    with pytest.raises(ValueError, match="context"):
        loaded.energy(pose)


def test_unknown_layout_fails_clearly(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a recognised prior layout"):
        load(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load(tmp_path / "missing.pkl")


# --- bending and shape -------------------------------------------------------------------------

def test_bending_energy_on_hand_cases():
    pose = torch.zeros(3, 69)
    pose[1, 52] = 0.5  # left elbow y: hyper-extension direction
    pose[2, 12] = 0.5  # right knee x: flexion
    energy = bending_energy(pose)
    assert torch.allclose(energy, torch.tensor([4.0, 3.0 + math.e, 3.0 + math.exp(-1.0)]))


def test_bending_energy_prefers_flexion_to_hyperextension():
    def pose(degrees: float) -> torch.Tensor:
        motions = {"elbow_flexion": degrees, "knee_flexion": degrees}
        return body_pose_from_components(motion_components(motions))[None].float()

    assert bending_energy(pose(60.0)) < 1.0 < 4.0 < 10.0 < bending_energy(pose(-40.0))


def test_shape_energy_is_the_squared_norm():
    betas = torch.tensor([[1.0, 2.0] + [0.0] * 8, [0.0] * 10])
    assert torch.equal(shape_energy(betas), torch.tensor([5.0, 0.0]))


# --- the open defaults -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def held_out_poses() -> tuple[torch.Tensor, torch.Tensor]:
    """1,000 sampler poses from a seed not used in training, and the same poses with two joints
    twisted beyond their anatomical limits."""
    plausible = sample_body_pose(1000, torch.Generator().manual_seed(2024))
    implausible = twist_beyond_limits(plausible, 2, torch.Generator().manual_seed(4202))
    return plausible, implausible


@pytest.mark.parametrize("name", ["gmm", "vposer", "cnf"])
def test_open_prior_separates_plausible_from_implausible_poses(name, held_out_poses):
    prior = load(name)
    plausible, implausible = held_out_poses
    with torch.no_grad():
        auc = roc_auc(prior.energy(plausible), prior.energy(implausible))
    assert auc >= 0.95, f"{name}: ROC AUC {auc:.3f}"


# --- training ----------------------------------------------------------------------------------

class Killed(Exception):
    """Stands in for a killed process."""


def kill_on_call(monkeypatch, name: str, call: int) -> None:
    """Make ``fitkit.train.priors.NAME`` raise on its ``call``-th call."""
    original = getattr(train, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise Killed
        return original(*args, **kwargs)

    monkeypatch.setattr(train, name, wrapper)


def test_killed_gmm_fit_resumes_to_the_same_result(tmp_path, monkeypatch):
    settings = {"num_poses": 2000, "steps": 6, "checkpoint_every": 1}
    reference = train.train_gmm(tmp_path / "ref.pkl", **settings)
    with monkeypatch.context() as m:
        kill_on_call(m, "em_step", 4)
        with pytest.raises(Killed):
            train.train_gmm(tmp_path / "gmm.pkl", **settings)
    assert train.resume_path(tmp_path / "gmm.pkl").is_file()
    resumed = train.train_gmm(tmp_path / "gmm.pkl", resume=True, **settings)
    assert torch.allclose(resumed.means, reference.means)
    assert not train.resume_path(tmp_path / "gmm.pkl").exists()


def test_killed_flow_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    settings = {"num_poses": 2000, "steps": 6, "batch_size": 32, "num_layers": 2, "hidden": 16,
                "checkpoint_every": 2}
    reference = train.train_cnf(tmp_path / "ref", **settings)
    with monkeypatch.context() as m:
        kill_on_call(m, "cnf_loss", 6)
        with pytest.raises(Killed):
            train.train_cnf(tmp_path / "cnf", **settings)
    resumed = train.train_cnf(tmp_path / "cnf", resume=True, **settings)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert isinstance(load(tmp_path / "cnf"), CNFPrior)


def test_train_cli_writes_a_loadable_vposer_folder(tmp_path):
    main(["vposer", "--out", str(tmp_path / "vp"), "--num-poses", "500", "--steps", "3",
          "--batch-size", "16"])
    assert isinstance(load(tmp_path / "vp"), VPoserPrior)
    assert (tmp_path / "vp" / "vposer.yaml").is_file()
