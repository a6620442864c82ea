"""The displacement network: shapes, loss, ground truth, checkpoints, batches and training."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

from fitkit.body import load_body
from fitkit.geometry import Camera
from fitkit.nets import (
    CheckpointError,
    FlowNet,
    FlowNetConfig,
    body_render_inputs,
    flow_loss,
    load_flownet,
    masked_epe,
    predict_displacements,
    read_checkpoint,
    save_flownet,
)
from fitkit.render import displacement_field, rasterize
from fitkit.train.__main__ import main as train_main
from fitkit.train.flow import FlowBatchMaker, train_flow

TINY = FlowNetConfig(image_size=64, width=16, stacks=2, depth=3, encoder_blocks=1,
                     displacement_scale=2.0)


@pytest.fixture(scope="module")
def body():
    try:
        return load_body("open")
    except FileNotFoundError as error:
        pytest.skip(f"open body not built: {error}")


def random_inputs(config: FlowNetConfig, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    size = config.image_size
    image = torch.rand(batch, 3, size, size, generator=gen)
    renders = torch.randn(batch, config.render_channels, size, size, generator=gen)
    return image, renders


def disk_batch(size: int = 64, batch: int = 2):
    """A fixed batch: random image and renders, a disk mask, a smooth displacement field."""
    image, renders = random_inputs(dataclasses.replace(TINY, image_size=size), batch, seed=1)
    axis = torch.arange(size, dtype=torch.float32)
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    mask = ((u - size / 2) ** 2 + (v - size / 3) ** 2 < (size / 4) ** 2).expand(batch, -1, -1)
    target = torch.stack([3.0 + u / size, -2.0 + 2 * v / size])[None].expand(batch, -1, -1, -1)
    renders = renders * mask[:, None]
    return image, renders, mask.clone(), target * mask[:, None]


@pytest.mark.parametrize("config", [
    TINY,
    dataclasses.replace(TINY, texture=False, stacks=1),
    FlowNetConfig(image_size=32, width=8, stacks=3, depth=2, encoder_blocks=2),
])
def test_every_stack_predicts_a_field_of_the_input_size_and_starts_at_zero(config):
    net = FlowNet(config)
    assert net.render_encoder.layers[0][0].in_channels == (10 if config.texture else 7)
    image, renders = random_inputs(config, batch=3)
    out = net(image, renders)
    size = config.image_size
    assert out.shape == (config.stacks, 3, 2, size, size)
    assert torch.all(out == 0)  # zero-initialized heads: the initial mesh as it is


def test_wrong_inputs_are_refused_with_the_reason():
    net = FlowNet(TINY)
    image, renders = random_inputs(TINY)
    with pytest.raises(ValueError, match="10 render channels, got 7"):
        net(image, renders[:, :7])
    with pytest.raises(ValueError, match="not a multiple of 8"):
        net(image[..., :60, :60], renders[..., :60, :60])
    with pytest.raises(ValueError, match="multiple of 2 \\*\\* depth"):
        FlowNetConfig(image_size=100, depth=4)


def test_loss_is_the_masked_end_point_error_and_zero_only_for_a_perfect_prediction():
    _, _, mask, target = disk_batch()
    assert masked_epe(target, target, mask) == 0
    assert flow_loss(torch.stack([target, target]), target, mask) == 0
    shifted = target + torch.tensor([3.0, 4.0])[None, :, None, None]
    assert masked_epe(shifted, target, mask).item() == pytest.approx(5.0)
    # what happens off the mask does not count
    garbage = torch.where(mask[:, None], target, torch.randn_like(target) * 100)
    assert masked_epe(garbage, target, mask) == 0
    assert masked_epe(shifted, target, torch.zeros_like(mask)) == 0
    # every stack counts
    predictions = torch.stack([shifted, target, shifted])
    assert flow_loss(predictions, target, mask).item() == pytest.approx(10.0)


def test_every_stack_is_supervised():
    net = FlowNet(TINY)
    image, renders, mask, target = disk_batch()
    flow_loss(net(image, renders), target, mask).backward()
    for head in net.hourglass.heads:
        assert head.weight.grad.abs().sum() > 0


def test_adam_steps_on_a_fixed_batch_lower_the_loss_clearly():
    torch.manual_seed(0)
    net = FlowNet(TINY)
    image, renders, mask, target = disk_batch()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = flow_loss(net(image, renders), target, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_checkpoint_round_trip_restores_config_and_outputs(tmp_path):
    config = dataclasses.replace(TINY, texture=False)
    net = FlowNet(config)
    image, renders = random_inputs(config)
    with torch.no_grad():  # non-zero heads and BatchNorm statistics
        for head in net.hourglass.heads:
            head.weight.normal_()
        net(image, renders)
    net.eval()
    path = save_flownet(tmp_path / "sub" / "net.pt", net, training={"step": 3})
    loaded = load_flownet(path)
    assert loaded.config == config and not loaded.training
    assert torch.equal(loaded(image, renders), net(image, renders))
    assert read_checkpoint(path)["training"]["step"] == 3
    assert not list(tmp_path.glob("sub/.*tmp"))


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_flownet(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        load_flownet(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="other.pt: not a fitkit displacement-network"):
        load_flownet(other)
    good = save_flownet(tmp_path / "good.pt", FlowNet(TINY))
    state = torch.load(good, weights_only=True)
    state["config"]["colour"] = 1
    torch.save(state, tmp_path / "field.pt")
    with pytest.raises(CheckpointError, match="field.pt: field 'config': unknown fields"):
        load_flownet(tmp_path / "field.pt")
    state["config"].pop("colour")
    state["config"]["width"] = 32
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="weights.pt: field 'model' does not fit"):
        load_flownet(tmp_path / "weights.pt")


def facing_grid(n: int, z: float, size: float):
    """An ``n x n`` vertex grid in the plane ``z``, facing the camera: (1, n*n, 3), faces."""
    s = torch.linspace(-size / 2, size / 2, n, dtype=torch.float64)
    gy, gx = torch.meshgrid(s, s, indexing="ij")
    vertices = torch.stack([gx, gy, torch.full_like(gx, z)], -1).view(1, -1, 3)
    idx = torch.arange(n * n).view(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    return vertices, torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)]).view(-1, 3)


def test_targets_of_a_mesh_moved_in_the_image_plane_are_its_pixel_shift():
    vertices, faces = facing_grid(9, z=3.0, size=1.0)
    camera = Camera.from_image_size(64, 48, dtype=torch.float64)
    focal = camera.focal_length[0, 0].item()
    move = torch.tensor([0.06, -0.03, 0.0], dtype=torch.float64)
    fragments = rasterize(vertices, faces, camera)
    target = displacement_field(vertices + move, vertices, faces, camera, fragments)
    assert target.shape == (1, 2, 48, 64) and fragments.mask.sum() > 500
    expected = (focal * move[:2] / 3.0)[:, None]
    on = target[0][:, fragments.mask[0]]
    assert torch.allclose(on, expected.expand_as(on), atol=1e-9)
    assert torch.all(target[0][:, ~fragments.mask[0]] == 0)


def test_render_inputs_of_a_body_are_normalized_as_documented(body):
    upright = torch.tensor([[math.pi, 0.0, 0.0]])
    output = body(global_orient=upright, transl=torch.tensor([[0.0, 0.3, 3.0]]))
    camera = Camera.from_image_size(64, 64)
    texture = torch.rand(3, 64, 64)
    textured = body_render_inputs(body, output, camera, texture)
    plain = body_render_inputs(body, output, camera)
    mask = textured.mask[0]
    assert textured.channels.shape == (1, 10, 64, 64) and plain.channels.shape == (1, 7, 64, 64)
    assert mask.sum() > 200 and torch.equal(textured.channels[:, 3:], plain.channels)
    assert torch.all(textured.channels[0][:, ~mask] == 0)
    on = textured.channels[0][:, mask]
    assert on[3].mean().abs() < 1e-4  # depth relative to the mean body depth
    assert torch.allclose(on[4:7].norm(dim=0), torch.ones(()), atol=1e-4)  # unit normals
    assert on[7:].abs().max() <= 1.0  # vertex colours in [-1, 1]

    net = FlowNet(TINY).eval()
    with torch.no_grad():
        net.hourglass.heads[-1].bias.fill_(1.0)
    field = predict_displacements(net, torch.rand(1, 3, 64, 64), textured)
    assert field.shape == (1, 2, 64, 64)
    assert torch.all(field[0][:, mask] == 2.0) and torch.all(field[0][:, ~mask] == 0)


def test_batch_generation_gives_consistent_finite_batches(body):
    maker = FlowBatchMaker(body, TINY)
    batch = maker.make(5, [0, 1, 2])
    assert batch.image.shape == (3, 3, 64, 64) and batch.renders.shape == (3, 10, 64, 64)
    assert batch.mask.shape == (3, 64, 64) and batch.target.shape == (3, 2, 64, 64)
    assert all(torch.isfinite(x).all() for x in (batch.image, batch.renders, batch.target))
    assert batch.mask.flatten(1).sum(1).min() > 20
    assert torch.all(batch.target.permute(1, 0, 2, 3)[:, ~batch.mask] == 0)
    assert 0 <= batch.image.min() and batch.image.max() <= 1
    again = maker.make(5, [0, 1, 2])  # a batch is a function of (seed, indices)
    assert torch.equal(again.renders, batch.renders) and torch.equal(again.target, batch.target)
    assert torch.equal(again.image, batch.image)


def test_training_resumes_exactly_and_the_cli_writes_a_loadable_checkpoint(body, tmp_path):
    config = dataclasses.replace(TINY, width=8, stacks=1, depth=2)
    kwargs = dict(config=config, batch_size=2, lr=1e-3, val_size=2, body=body, progress=False)
    whole = train_flow(tmp_path / "whole.pt", steps=2, checkpoint_every=1, **kwargs)
    train_flow(tmp_path / "split.pt", steps=1, **kwargs)
    resumed = train_flow(tmp_path / "split.pt", steps=2, resume=True, **kwargs)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    history = read_checkpoint(tmp_path / "split.pt")["training"]["history"]
    assert [h["step"] for h in history] == [1, 2] and history[-1]["val_baseline"] > 0
    with pytest.raises(ValueError, match="lr: checkpoint 0.001, given 0.01"):
        train_flow(tmp_path / "split.pt", steps=3, resume=True, **{**kwargs, "lr": 1e-2})

    out = tmp_path / "cli.pt"
    train_main(["flow", "--out", str(out), "--steps", "1", "--batch-size", "1", "--val-size",
                "1", "--image-size", "64", "--width", "8", "--stacks", "1", "--no-texture",
                "--body", str(body.source), "--device", "cpu"])
    net = load_flownet(out)
    assert net.config.texture is False and net.config.width == 8


def test_the_cli_names_a_bad_checkpoint_to_resume_from(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert train_main(["flow", "--out", str(junk), "--resume", "--steps", "1"]) == 2
    assert "junk.pt: not a readable torch checkpoint" in capsys.readouterr().err
    assert train_main(["flow", "--out", str(tmp_path / "absent.pt"), "--resume", "--steps",
                       "1"]) == 2
    assert re.search("no checkpoint at .*absent.pt", capsys.readouterr().err)


def test_the_cosine_schedule_anneals_to_zero_and_resume_checks_it(body, tmp_path):
    from fitkit.train.flow import learning_rate

    assert learning_rate(1e-3, 0, 100, "cosine") == pytest.approx(1e-3)
    assert learning_rate(1e-3, 50, 100, "cosine") == pytest.approx(5e-4)
    assert learning_rate(1e-3, 100, 100, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(1e-3, 70, 100, "constant") == 1e-3
    config = dataclasses.replace(TINY, width=8, stacks=1, depth=2)
    kwargs = dict(config=config, batch_size=1, lr=1e-3, val_size=0, body=body, progress=False)
    train_flow(tmp_path / "run.pt", steps=1, schedule="cosine", **kwargs)
    with pytest.raises(ValueError, match="schedule"):
        train_flow(tmp_path / "run.pt", steps=2, resume=True, **kwargs)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        train_flow(tmp_path / "other.pt", steps=1, schedule="step", **kwargs)
