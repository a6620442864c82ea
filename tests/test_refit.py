"""ReFit: the 26 update streams, window sampling, the full-frame adjusted camera in feedback and
loss, feedback dropout, the public checkpoint layout, the solver behind ``fit`` and resumable
training — on tiny networks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fitkit.body import load_body
from fitkit.fitting import FitBatch, FitResult
from fitkit.fitting.refit_solver import ReFitSolver
from fitkit.geometry import Camera
from fitkit.geometry.crop import crop_to_pixels
from fitkit.geometry.fullframe import full_frame_to_weak_perspective
from fitkit.io.inputs import FitInputError
from fitkit.nets import CheckpointError, load_network, save_network
from fitkit.nets.refit import (
    NUM_STREAMS,
    CropInfo,
    ReFit,
    ReFitConfig,
    ReFitTarget,
    UpdateStreams,
    refit_loss,
    sample_windows,
)
from fitkit.nets.refit_official import load_official_refit

TINY = ReFitConfig(image_size=32, width=8, keypoint_width=8, feedback_size=16, hidden=8)


@pytest.fixture(scope="module")
def body():
    return load_body("open")


def _crop(batch: int = 2, centre=(40.0, 50.0), size=48.0) -> CropInfo:
    image = torch.tensor([[100.0, 120.0]]).expand(batch, 2)
    return CropInfo(torch.tensor([centre]).expand(batch, 2).clone(), torch.full((batch,), size),
                    Camera.default(image))


def _pose(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    orient = torch.tensor([[np.pi, 0.0, 0.0]]).expand(batch, 3).clone()
    return {"global_orient": orient + 0.1 * torch.randn(batch, 3, generator=generator),
            "body_pose": 0.2 * torch.randn(batch, 69, generator=generator),
            "betas": torch.randn(batch, 10, generator=generator),
            "transl": torch.tensor([[0.1, 0.2, 4.0]]).expand(batch, 3).clone()}


@pytest.mark.parametrize("reset_after", [True, False])
def test_26_streams_equal_separate_grus_and_mlps(reset_after):
    torch.manual_seed(0)
    inputs, hidden = 7, 4
    streams = UpdateStreams(inputs, hidden, reset_after)
    for parameter in streams.parameters():  # not the small initial output layers
        torch.nn.init.normal_(parameter)
    x, h, box = torch.randn(3, inputs), torch.randn(3, NUM_STREAMS, hidden), torch.randn(3, 3)
    new = streams.gru(x, h)
    pose, betas, camera = streams.decode(new, box)
    for n in range(NUM_STREAMS):
        w_x, b_x = streams.gru_x.weight[n], streams.gru_x.bias[n]
        w_h, b_h = streams.gru_h.weight[n], streams.gru_h.bias[n]
        if reset_after:
            cell = torch.nn.GRUCell(inputs, hidden)
            with torch.no_grad():
                cell.weight_ih.copy_(w_x), cell.bias_ih.copy_(b_x)
                cell.weight_hh.copy_(w_h), cell.bias_hh.copy_(b_h)
            expected = cell(x, h[:, n])
        else:  # Cho et al.: the reset gate scales the hidden state before its linear map
            r = torch.sigmoid(F.linear(x, w_x[:hidden], b_x[:hidden])
                              + F.linear(h[:, n], w_h[:hidden], b_h[:hidden]))
            z = torch.sigmoid(F.linear(x, w_x[hidden:2 * hidden], b_x[hidden:2 * hidden])
                              + F.linear(h[:, n], w_h[hidden:2 * hidden],
                                         b_h[hidden:2 * hidden]))
            q = torch.tanh(F.linear(x, w_x[2 * hidden:], b_x[2 * hidden:])
                           + F.linear(r * h[:, n], w_h[2 * hidden:], b_h[2 * hidden:]))
            expected = (1 - z) * q + z * h[:, n]
        torch.testing.assert_close(new[:, n], expected)
        inner = F.relu(F.linear(torch.cat([expected, box], -1), streams.mlp.weight[n],
                                streams.mlp.bias[n]))
        if n < 24:
            out, got = F.linear(inner, streams.out_pose.weight[n], streams.out_pose.bias[n]), \
                pose[:, n]
        else:
            layer = streams.out_shape if n == 24 else streams.out_camera
            out, got = layer(inner), (betas if n == 24 else camera)
        torch.testing.assert_close(got, out)


def _bilinear(image: torch.Tensor, x: float, y: float) -> float:
    """Hand-computed bilinear read of ``image`` (H, W) at pixel (x, y), zero off the image."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    total = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
            if 0 <= xi < image.shape[1] and 0 <= yi < image.shape[0]:
                total += weight * float(image[yi, xi])
    return total


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_window_sampling_is_a_bilinear_read_around_each_keypoint_on_its_own_channel(offset):
    torch.manual_seed(1)
    maps = torch.randn(1, 2, 8, 8)
    points = torch.tensor([[[0.13, -0.41], [0.9, 0.95]]])  # the second window leaves the map
    windows = sample_windows(maps, points, radius=1, offset=offset)
    assert windows.shape == (1, 2, 9)
    for k in range(2):
        centre = ((points[0, k] + 1) * 8 - 1) / 2 + offset  # feature pixel (x, y)
        for index in range(9):
            dy, dx = index // 3 - 1, index % 3 - 1
            expected = _bilinear(maps[0, k], float(centre[0]) + dx, float(centre[1]) + dy)
            assert float(windows[0, k, index]) == pytest.approx(expected, abs=1e-5)


def test_moving_the_crop_changes_neither_feedback_positions_nor_loss(body, monkeypatch):
    """Full-frame adjusted reprojection: with the body and the full image fixed, a shifted box
    reads the same full-image pixels and gives the same losses."""
    torch.manual_seed(2)
    net = ReFit(TINY).eval()
    params = _pose(2)
    seen = []
    monkeypatch.setattr("fitkit.nets.refit.sample_windows",
                        lambda maps, points, *a: seen.append(points) or sample_windows(
                            maps, points, *a))
    images = torch.rand(2, 3, 32, 32)
    target = ReFitTarget(body(**_pose(2, seed=5), vertex_ids=torch.zeros(0, dtype=torch.long))
                         .joints, torch.eye(3).expand(2, 24, 3, 3), torch.zeros(2, 10))
    losses, pixels = [], []
    for centre in ((40.0, 50.0), (70.0, 35.0)):
        crop = _crop(centre=centre)
        estimates = net(images, crop, body, iterations=1, init=params)
        torch.testing.assert_close(estimates[0].transl, params["transl"])
        pixels.append(crop_to_pixels(seen[-1], crop.box_center, crop.box_size))
        losses.append(refit_loss(estimates[:1], target, crop)[1])
    expected = crop.camera.project(body(**params, vertex_ids=torch.zeros(0, dtype=torch.long))
                                   .joints)
    torch.testing.assert_close(pixels[0], expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(pixels[1], expected, atol=1e-3, rtol=0)
    for name in ("keypoints2d", "joints3d", "pose", "betas"):
        torch.testing.assert_close(losses[0][name], losses[1][name], atol=1e-6, rtol=1e-5)
    assert float(losses[0]["keypoints2d"]) > 0


def test_feedback_dropout_zeroes_whole_keypoints_and_only_in_training(body):
    torch.manual_seed(3)
    net = ReFit(dataclasses.replace(TINY, feedback_dropout=0.25))
    captured = []
    net.window_layer.register_forward_hook(lambda module, args, out: captured.append(args[0]))
    images, crop = torch.rand(4, 3, 32, 32), _crop(4, centre=(49.5, 59.5), size=110.0)
    init = _pose(4)  # every joint inside the box
    net.train()
    for module in net.modules():  # the same features in both runs
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    torch.manual_seed(4)
    net(images, crop, body, iterations=2, init=init)
    net.eval()
    net(images, crop, body, iterations=1, init=init)
    dropped_run, clean = captured[0], captured[2]
    assert (clean != 0).any(dim=-1).all()  # no dropout in eval mode: no window all zero
    zero = (dropped_run == 0).all(dim=-1)  # (B, K) whole windows zero
    assert 0 < int(zero.sum()) < zero.numel()
    kept = ~zero
    torch.testing.assert_close(dropped_run[kept], clean[kept] / 0.75)
    assert torch.equal((captured[1] == 0).all(dim=-1), zero)  # one mask for all iterations


def test_estimate_detached_between_iterations_and_checkpoint_round_trip(body, tmp_path):
    torch.manual_seed(5)
    net = ReFit(TINY).train()
    estimates = net(torch.rand(2, 3, 32, 32), _crop(), body, iterations=2)
    assert len(estimates) == 3
    gradient = torch.autograd.grad(estimates[2].pose6d.sum(), estimates[1].pose6d,
                                   allow_unused=True)[0]
    assert gradient is None
    path = save_network(tmp_path / "refit.pt", net)
    loaded = load_network(path, "refit")
    assert loaded.config == TINY
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def _official_state(count=5, hidden=4, local=8, width=6, features=10, vector=12):
    """A random state dict in the public ReFit layout (key names and shapes)."""
    generator = torch.Generator().manual_seed(6)

    def r(*shape):
        return torch.randn(*shape, generator=generator)

    inputs = local + 3 + 144 + 10 + 3
    state = {"backbone.conv1.weight": r(64, 3, 3, 3), "smpl.v_template": r(6890, 3),
             "init_layer.weight": r(26 * hidden, vector), "init_layer.bias": r(26 * hidden),
             "flow_layer.weight": r(count, 5, 49), "flow_layer.bias": r(count, 5),
             "local_layer.weight": r(local, 5 * count), "local_layer.bias": r(local),
             "init_pose": r(1, 144), "init_shape": r(1, 10), "init_cam": r(1, 3)}
    for index, (out, inp) in ((0, (width, features)), (3, (width, width))):
        state[f"corr_layer.{index}.weight"] = r(out, inp, 3, 3)
        bn = f"corr_layer.{index + 1}"
        state |= {f"{bn}.weight": r(width), f"{bn}.bias": r(width),
                  f"{bn}.running_mean": r(width), f"{bn}.running_var": r(width).abs(),
                  f"{bn}.num_batches_tracked": torch.tensor(3)}
    state["corr_layer.6.weight"] = r(count, width, 1, 1)
    for gate in ("lz", "lr", "lq"):
        state[f"update_block.pose_gru.{gate}.weight"] = r(24, hidden, hidden + inputs)
        state[f"update_block.pose_gru.{gate}.bias"] = r(24, hidden)
        for gru in ("shape_gru", "cam_gru"):
            state[f"update_block.{gru}.{gate}.weight"] = r(hidden, hidden + inputs)
            state[f"update_block.{gru}.{gate}.bias"] = r(hidden)
    state |= {"regressor.p.0.weight": r(24, hidden, hidden + 3), "regressor.p.0.bias":
              r(24, hidden), "regressor.decpose.weight": r(24, 6, hidden),
              "regressor.decpose.bias": r(24, 6)}
    for name, out in (("s", hidden), ("c", hidden)):
        state[f"regressor.{name}.0.weight"] = r(out, hidden + 3)
        state[f"regressor.{name}.0.bias"] = r(out)
    state |= {"regressor.decshape.weight": r(10, hidden), "regressor.decshape.bias": r(10),
              "regressor.deccam.weight": r(3, hidden), "regressor.deccam.bias": r(3)}
    return state


def test_official_layout_loads_exactly_and_names_bad_keys(tmp_path):
    state = _official_state()
    path = tmp_path / "checkpoint_best.pth.tar"
    torch.save({"model": state, "optimizer": {}}, path)
    with pytest.raises(CheckpointError, match="HRNet-W48"):
        load_official_refit(path)
    loaded = load_official_refit(path, head_only=True)
    net, hidden = loaded.net, 4
    assert loaded.skipped == ["backbone.conv1.weight"]
    assert torch.equal(net.mean_pose, state["init_pose"])
    # the public GRU of one pose stream and of the camera stream, from the file's tensors
    x, h = torch.randn(2, net.config.update_input), torch.randn(2, NUM_STREAMS, hidden)
    new = net.update.gru(x, h)
    for n, prefix in ((3, "update_block.pose_gru"), (25, "update_block.cam_gru")):
        def gate(name, hx, n=n, prefix=prefix):
            weight, bias = state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"]
            if n < 24:
                weight, bias = weight[n], bias[n]
            return F.linear(hx, weight, bias)
        z = torch.sigmoid(gate("lz", torch.cat([h[:, n], x], -1)))
        r = torch.sigmoid(gate("lr", torch.cat([h[:, n], x], -1)))
        q = torch.tanh(gate("lq", torch.cat([r * h[:, n], x], -1)))
        torch.testing.assert_close(new[:, n], (1 - z) * h[:, n] + z * q)
    # the public window is x-major: entry (i, j) sits at (x + i - 3, y + j - 3)
    maps, points = torch.randn(1, 5, 16, 16), torch.rand(1, 5, 2) - 0.5
    mine = sample_windows(maps, points, 3, 0.5)
    public = mine.unflatten(-1, (7, 7)).transpose(-1, -2).flatten(-2)
    expected = torch.einsum("koi,bki->bko", state["flow_layer.weight"], public) \
        + state["flow_layer.bias"]
    torch.testing.assert_close(net.window_layer(mine), expected)

    bad = dict(state)
    bad["regressor.p.2.weight"] = bad.pop("regressor.p.0.weight")
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['regressor.p.0.weight'\]"):
        load_official_refit(path, head_only=True)
    bad = dict(state, **{"update_block.extra.weight": torch.zeros(1)})
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError, match="unexpected keys.*update_block.extra.weight"):
        load_official_refit(path, head_only=True)


def test_solver_returns_a_full_frame_fit_result(body, tmp_path):
    torch.manual_seed(7)
    net = ReFit(TINY)
    images = [np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)] * 2
    camera = Camera.default(torch.tensor([[70.0, 90.0]] * 2))
    solver = ReFitSolver(body, net, iterations=2)
    result = solver.solve(FitBatch({}, camera, {}, images=images))
    assert isinstance(result, FitResult)
    assert result.params["body_pose"].shape == (2, 69)
    assert result.vertices.shape == (2, body.num_vertices, 3)
    assert torch.equal(result.energy, torch.zeros(2)) and result.terms == {}
    assert torch.equal(result.faces, body.faces)
    assert not result.flags["nan"].any()
    init = _pose(2)
    same = solver.solve(FitBatch({}, camera, init, images=images))
    centre, side = solver.boxes(FitBatch({}, camera, init, images=images))
    zero = ReFitSolver(body, net, iterations=0).solve(FitBatch({}, camera, init, images=images))
    torch.testing.assert_close(zero.params["transl"], init["transl"], atol=1e-5, rtol=0)
    torch.testing.assert_close(zero.params["body_pose"], init["body_pose"], atol=1e-4, rtol=0)
    assert not torch.allclose(same.params["body_pose"], init["body_pose"])
    weak = full_frame_to_weak_perspective(init["transl"], centre, side, camera)
    assert (weak[:, 0] > 0).all()
    keypoints = torch.cat([torch.rand(2, 25, 2) * 60, torch.ones(2, 25, 1)], -1)
    scored = solver.solve(FitBatch({"keypoints": keypoints}, camera, {}, images=images))
    assert set(scored.terms) == {"keypoints"} and (scored.energy > 0).all()


def test_fit_with_refit_returns_the_documented_result_and_chains_into_smplify(body, tmp_path):
    import fitkit

    torch.manual_seed(8)
    path = save_network(tmp_path / "tiny.pt", ReFit(TINY))
    images = np.random.default_rng(1).integers(0, 255, (2, 80, 64, 3), dtype=np.uint8)
    result = fitkit.fit(images, data_term="refit", refit_net=path, refit_iterations=2,
                        body=body, device="cpu")
    assert isinstance(result, FitResult)
    assert set(result.params) >= {"global_orient", "body_pose", "betas", "transl",
                                  "focal_length", "camera_center"}
    assert result.joints.shape == (2, 24, 3) and result.energy.shape == (2,)
    assert result.timings["refit"] > 0
    keypoints = np.concatenate([np.random.default_rng(2).uniform(10, 60, (2, 25, 2)),
                                np.ones((2, 25, 1))], -1)
    scored = fitkit.fit(images, data_term="refit", refit_net=path, keypoints=keypoints,
                        body=body, device="cpu", init=result)
    assert set(scored.terms) == {"keypoints"}
    chained = fitkit.fit(images, init=scored, data_term="keypoints", keypoints=keypoints,
                         body=body, device="cpu", iterations=2, prior=None)
    assert chained.energy.shape == (2,)
    with pytest.raises(FitInputError, match="refit_net"):
        fitkit.fit(images, data_term="refit", refit_net=tmp_path / "missing.pt", body=body,
                   device="cpu")


def test_training_resumes_to_the_same_weights(body, tmp_path):
    from fitkit.train.refit import ReFitAugment, train_refit

    config = dataclasses.replace(TINY, iterations=1)
    augment = ReFitAugment(world_size=64, texture_size=64)
    common = {"config": config, "batch_size": 2, "val_size": 0, "body": body,
              "augment": augment, "progress": False, "checkpoint_every": 1, "reuse": 2}
    whole = train_refit(tmp_path / "whole.pt", steps=2, **common)
    train_refit(tmp_path / "part.pt", steps=1, **common)
    resumed = train_refit(tmp_path / "part.pt", steps=2, resume=True, **common)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    with pytest.raises(ValueError, match="feedback_dropout"):
        train_refit(tmp_path / "part.pt", steps=3, resume=True,
                    **{**common, "config": dataclasses.replace(config, feedback_dropout=0.0)})


def test_init_fraction_starts_that_share_of_steps_from_the_initial_estimates(
        body, tmp_path, monkeypatch):
    from fitkit.nets.refit import ReFit
    from fitkit.train.refit import ReFitAugment, starts_from_init, train_refit

    assert [starts_from_init(step, 0.5) for step in range(1, 7)] == [False, True] * 3
    assert sum(starts_from_init(step, 0.25) for step in range(1, 101)) == 25
    assert not any(starts_from_init(step, 0.0) for step in range(1, 10))
    seen = []
    forward = ReFit.forward

    def recording(self, images, crop, body, iterations=None, init=None):
        seen.append(init)
        return forward(self, images, crop, body, iterations=iterations, init=init)

    monkeypatch.setattr(ReFit, "forward", recording)
    train_refit(tmp_path / "net.pt", config=dataclasses.replace(TINY, iterations=1), steps=2,
                batch_size=2, val_size=0, body=body, progress=False, init_fraction=0.5,
                augment=ReFitAugment(world_size=64, texture_size=64))
    assert seen[0] is None and set(seen[1]) == {"global_orient", "body_pose", "betas", "transl"}
    with pytest.raises(ValueError, match="init_fraction"):
        train_refit(tmp_path / "bad.pt", init_fraction=1.5, body=body, progress=False)


def test_refit_trains_on_a_dataset_folder(body, tmp_path):
    """``train refit --data DIR``: batches from the folder's photos and gt.npz (boxes around
    the true bodies, the folder's cameras), the folder's content in the run's settings, and a
    folder without ground truth refused with exit code 2."""
    from fitkit.synth import SynthConfig, generate_dataset
    from fitkit.train.__main__ import main as train_main
    from fitkit.train.folder import FolderSamples
    from fitkit.train.refit import FolderReFitBatchMaker, ReFitAugment, train_refit

    data = generate_dataset(tmp_path / "data", 4, seed=3, config=SynthConfig(size=64),
                            progress=False)
    maker = FolderReFitBatchMaker(FolderSamples(data, body), 32, ReFitAugment())
    batch = maker.make(1, [0, 1, 2])
    assert batch.images.shape == (3, 3, 32, 32)
    rows = maker.samples.rows(1, [0, 1, 2])
    gt = np.load(data / "gt.npz")
    torch.testing.assert_close(batch.focal_length, torch.as_tensor(gt["focal_length"][rows]))
    joints = batch.crop.camera.project(body(**batch.gt).joints)  # the true joints, image pixels
    inside = ((joints - batch.box_center[:, None]).abs() <= batch.box_size[:, None, None] / 2)
    assert inside.all(dim=-1).float().mean() > 0.95
    net = train_refit(tmp_path / "net.pt", config=dataclasses.replace(TINY, iterations=1),
                      steps=2, batch_size=2, val_size=0, body=body, progress=False, data=data)
    state = torch.load(tmp_path / "net.pt", weights_only=True)
    assert state["training"]["settings"]["data"]["folder"] == str(data.resolve())
    assert net is not None
    (data / "gt.npz").unlink()
    assert train_main(["refit", "--out", str(tmp_path / "bad.pt"), "--data", str(data),
                       "--steps", "1"]) == 2


def test_train_refit_betas_weight_reaches_the_loss_weights(tmp_path, monkeypatch) -> None:
    """``--betas-weight`` changes only the loss's betas weight (the others keep the public
    code's values)."""
    import fitkit.train.refit as train_module
    from fitkit.nets.refit import LossWeights
    from fitkit.train.__main__ import main as train_main

    seen = {}
    monkeypatch.setattr(train_module, "train_refit",
                        lambda *args, **kwargs: seen.update(weights=kwargs["weights"]))
    assert train_main(["refit", "--out", str(tmp_path / "r.pt"), "--steps", "1",
                       "--betas-weight", "0.05"]) == 0
    assert seen["weights"] == LossWeights(betas=0.05)
    assert train_main(["refit", "--out", str(tmp_path / "r.pt"), "--steps", "1"]) == 0
    assert seen["weights"] == LossWeights()


def test_sampled_vertices_spread_over_the_whole_body(body) -> None:
    """Farthest-point samples: distinct, deterministic, closer-spaced nowhere than a random draw
    of the same size, and on every DensePose part of the body."""
    from fitkit.body.keypoints import SAMPLED_VERTICES, sample_vertex_ids

    ids = body.selector.vertex_ids("sampled")
    assert ids.shape == (SAMPLED_VERTICES,) and len(torch.unique(ids)) == SAMPLED_VERTICES
    rest = body(betas=torch.zeros(1, 10)).vertices[0]
    assert torch.equal(sample_vertex_ids(rest), sample_vertex_ids(rest))

    def spacing(chosen: torch.Tensor) -> float:  # the smallest distance between two samples
        distances = torch.cdist(rest[chosen], rest[chosen])
        return float(distances[~torch.eye(len(chosen), dtype=torch.bool)].min())

    draw = torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))
    assert spacing(ids) > 3 * spacing(draw[:SAMPLED_VERTICES])
    if body.dp_I is not None:
        assert set(body.dp_I[ids].tolist()) == set(range(1, 25))
    output = body(vertex_ids=ids)
    torch.testing.assert_close(output.keypoints("sampled"), body().vertices[:, ids])


def test_a_refit_network_reads_the_sampled_vertices(body) -> None:
    """keypoints="sampled": one feedback channel per sampled vertex, a forward pass through the
    loop, and a size check."""
    from fitkit.body.keypoints import SAMPLED_VERTICES

    config = dataclasses.replace(TINY, keypoints="sampled", num_keypoints=SAMPLED_VERTICES)
    torch.manual_seed(8)
    net = ReFit(config).eval()
    estimates = net(torch.rand(2, 3, 32, 32), _crop(), body, iterations=2, init=_pose(2))
    assert estimates[-1].keypoints.shape == (2, SAMPLED_VERTICES, 3)
    assert net.keypoint_maps[-1].out_channels == SAMPLED_VERTICES
    with pytest.raises(ValueError, match="'sampled' has 231 points"):
        dataclasses.replace(TINY, keypoints="sampled", num_keypoints=24)
