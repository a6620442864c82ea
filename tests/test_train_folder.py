"""Training the displacement network on a dataset folder with ground truth (fitkit.train.folder,
``python -m fitkit.train flow --data``), on folders that ``python -m fitkit.synth`` writes."""

from __future__ import annotations

import dataclasses
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fitkit.body import load_body
from fitkit.io.params import write_params
from fitkit.io.runs import file_digest
from fitkit.nets import FlowNet, FlowNetConfig, flow_loss, load_flownet, read_checkpoint
from fitkit.nets.predict import flownet_path
from fitkit.synth.__main__ import main as synth_main
from fitkit.synth.init import InitNoise
from fitkit.train.__main__ import main as train_main
from fitkit.train.flow import (
    FlowAugment,
    FolderBatchMaker,
    evaluate,
    train_flow,
    validation_set,
)
from fitkit.train.folder import FolderSamples

TINY = FlowNetConfig(image_size=64, width=8, stacks=1, depth=2, encoder_blocks=1,
                     displacement_scale=2.0)
NO_AUGMENT = FlowAugment(gt_pose=0.0, image_channel_noise=0.0, brightness=0.0, contrast=0.0,
                         texture_channel_noise=0.0, texture_noise=0.0, texture_blur=1)


@pytest.fixture(scope="module")
def body():
    try:
        return load_body("open")
    except FileNotFoundError as error:
        pytest.skip(f"open body not built: {error}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, body):
    """Four synthetic photos with gt.npz and init.npz, as ``python -m fitkit.synth`` writes."""
    root = tmp_path_factory.mktemp("synth") / "data"
    assert synth_main(["--out", str(root), "--num", "4", "--size", "64", "--quiet"]) == 0
    return root


@pytest.fixture(scope="module")
def silhouettes(tmp_path_factory, folder):
    """The same ground truth with white silhouettes (from the DensePose IUV) as the photos."""
    root = tmp_path_factory.mktemp("masks")
    (root / "images").mkdir()
    shutil.copy(folder / "gt.npz", root / "gt.npz")
    for path in sorted((folder / "densepose").glob("*_IUV.png")):
        covered = np.asarray(Image.open(path)).max(axis=-1) > 0
        name = path.name.removesuffix("_IUV.png")
        Image.fromarray(np.repeat(covered[..., None], 3, axis=2).astype(np.uint8) * 255).save(
            root / "images" / f"{name}.png")
    return root


def copy_folder(source, target):
    shutil.copytree(source, target)
    return target


def gt_arrays(root):
    with np.load(root / "gt.npz") as npz:
        return {key: npz[key] for key in npz.files}


def test_folder_samples_read_the_ground_truth_and_perturb_it_like_the_synthetic_world(
        folder, body):
    samples = FolderSamples(folder, body)
    assert len(samples) == 4 and samples.names == ["000000", "000001", "000002", "000003"]
    rows = samples.rows(0, range(8))
    assert sorted(rows[:4]) == [0, 1, 2, 3] and sorted(rows[4:]) == [0, 1, 2, 3]
    assert samples.rows(0, range(8)) == rows and samples.rows(1, range(8)) != rows

    batch = samples.draw(0, [0, 1, 2])
    gt = gt_arrays(folder)
    for i, (row, name) in enumerate(zip(batch.rows, batch.names, strict=True)):
        assert name == samples.names[row]
        photo = np.asarray(Image.open(folder / "images" / f"{name}.png"))
        assert torch.allclose(batch.images[i], torch.tensor(photo).permute(2, 0, 1) / 255.0)
        for key in ("body_pose", "betas", "transl"):
            assert np.allclose(batch.gt[key][i].numpy(), gt[key][row])
        assert np.allclose(batch.camera.focal_length[i].numpy(), gt["focal_length"][row])
    again = samples.draw(0, [0, 1, 2])
    assert all(torch.equal(again.init[k], batch.init[k]) for k in batch.init)
    other = samples.draw(1, [0, 1, 2])
    assert not torch.equal(other.init["betas"], batch.init["betas"])

    # many draws of the rows: the perturbation has the synthetic world's magnitudes
    noise = InitNoise()
    many = samples.draw(0, range(96))
    assert (many.init["betas"] - many.gt["betas"]).std() == pytest.approx(noise.betas, rel=0.2)
    depth = torch.log(many.init_output.joints[:, 0, 2] / many.gt_output.joints[:, 0, 2])
    assert depth.std() == pytest.approx(noise.depth, rel=0.3)
    roots = [many.camera.project(out.joints[:, :1])[:, 0]
             for out in (many.gt_output, many.init_output)]
    shift = (roots[1] - roots[0]).norm(dim=-1)  # the root stays in place up to the small shift
    assert shift.median() < 0.05 * 64
    assert torch.allclose(many.init_output.vertices,
                          body(**many.init).vertices, atol=1e-5)
    kept = samples.draw(0, [0, 1], keep_pose=torch.tensor([True, False]))
    assert torch.equal(kept.init["body_pose"][0], kept.gt["body_pose"][0])
    assert not torch.equal(kept.init["body_pose"][1], kept.gt["body_pose"][1])


def test_file_init_starts_from_the_folders_init_rows(folder, body):
    samples = FolderSamples(folder, body, file_init=1.0)
    batch = samples.draw(0, [0, 1, 2, 3])
    with np.load(folder / "init.npz") as npz:
        init = {key: npz[key] for key in npz.files}
    assert batch.from_file.all()
    for i, row in enumerate(batch.rows):
        for key in ("body_pose", "betas", "transl"):
            assert np.allclose(batch.init[key][i].numpy(), init[key][row])
    assert "init.npz" in samples.digest()


def test_folder_batches_crop_the_photo_around_the_initial_mesh_and_target_the_true_one(
        silhouettes, body):
    config = dataclasses.replace(TINY, texture=False)
    exact = FolderSamples(silhouettes, body, InitNoise(0, 0, 0, 0, 0, 0))
    batch = FolderBatchMaker(exact, config, NO_AUGMENT).make(0, [0, 1, 2, 3])
    assert batch.image.shape == (4, 3, 64, 64) and batch.renders.shape == (4, 7, 64, 64)
    assert batch.target.abs().max() < 1e-3  # the initial mesh is the true one
    person = batch.image.mean(1) > 0.5
    iou = (person & batch.mask).sum() / (person | batch.mask).sum()
    assert iou > 0.85  # the crop of the photo is where the mesh renders

    shifted = FolderSamples(silhouettes, body, InitNoise(0, 0, 0, 0, 0, shift=0.3))
    batch = FolderBatchMaker(shifted, config, NO_AUGMENT).make(0, [0, 1, 2, 3])
    moved = batch.target.norm(dim=1)[batch.mask]
    assert moved.median() > 2.0
    size = config.image_size
    v, u = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pixels = torch.stack([u, v]).float()[None].expand(4, -1, -1, -1)

    def on_person(positions):  # (B, 2, S, S) crop pixels -> photo value there
        grid = (2 * positions + 1) / size - 1
        return F.grid_sample(batch.image.mean(1, keepdim=True), grid.permute(0, 2, 3, 1),
                             align_corners=False)[:, 0][batch.mask] > 0.5

    # following the targets from the initial render lands on the person in the photo
    assert on_person(pixels + batch.target).float().mean() > 0.9
    assert on_person(pixels).float().mean() < on_person(pixels + batch.target).float().mean()

    textured = FolderBatchMaker(shifted, TINY, NO_AUGMENT).make(0, [0, 1])
    assert textured.renders.shape == (2, 10, 64, 64)
    assert torch.allclose(textured.target, batch.target[:2], atol=1e-3)


def test_the_loss_falls_on_a_fixed_folder_batch(folder, body):
    batch = FolderBatchMaker(FolderSamples(folder, body), TINY).make(0, [0, 1, 2, 3])
    torch.manual_seed(0)
    net = FlowNet(TINY)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = flow_loss(net(batch.image, batch.renders), batch.target, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_folder_training_resumes_exactly_and_refuses_a_changed_folder(folder, body, tmp_path):
    data = copy_folder(folder, tmp_path / "data")
    kwargs = dict(config=TINY, batch_size=2, lr=1e-3, val_size=0, body=body, progress=False,
                  data=data)
    whole = train_flow(tmp_path / "whole.pt", steps=2, checkpoint_every=1, **kwargs)
    train_flow(tmp_path / "split.pt", steps=1, **kwargs)
    resumed = train_flow(tmp_path / "split.pt", steps=2, resume=True, **kwargs)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    settings = read_checkpoint(tmp_path / "split.pt")["training"]["settings"]
    assert settings["data"]["gt.npz"] == file_digest(data / "gt.npz")
    assert settings["data_mix"] == 0.0

    gt = gt_arrays(data)
    gt["transl"][0, 2] += 0.1
    write_params(data / "gt.npz", gt)
    with pytest.raises(ValueError, match="data: checkpoint"):
        train_flow(tmp_path / "split.pt", steps=3, resume=True, **kwargs)
    with pytest.raises(ValueError, match="data_mix: checkpoint 0.0, given 0.5"):
        train_flow(tmp_path / "whole.pt", steps=3, resume=True,
                   **{**kwargs, "data": folder, "data_mix": 0.5})


def test_a_full_data_mix_trains_on_the_synthetic_world_alone(folder, body, tmp_path):
    kwargs = dict(config=TINY, steps=1, batch_size=1, lr=1e-3, val_size=0, body=body,
                  progress=False)
    synthetic = train_flow(tmp_path / "synthetic.pt", **kwargs)
    mixed = train_flow(tmp_path / "mixed.pt", data=folder, data_mix=1.0, **kwargs)
    folder_only = train_flow(tmp_path / "folder.pt", data=folder, **kwargs)
    parameters = [list(net.parameters()) for net in (synthetic, mixed, folder_only)]
    assert all(torch.equal(a, b) for a, b in zip(parameters[0], parameters[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(parameters[0], parameters[2], strict=True))


def test_val_data_validates_on_the_other_folder(folder, body, tmp_path):
    out = tmp_path / "net.pt"
    net = train_flow(out, config=TINY, steps=1, batch_size=2, lr=1e-3, val_size=2, body=body,
                     progress=False, data=folder, val_data=folder)
    history = read_checkpoint(out)["training"]["history"]
    maker = FolderBatchMaker(FolderSamples(folder, body), TINY)
    epe, baseline = evaluate(net, validation_set(maker, 2, 2), "cpu")
    assert history == [{"step": 1, "val_epe": pytest.approx(epe),
                        "val_baseline": pytest.approx(baseline)}]


def test_init_from_starts_from_the_given_network_and_refuses_another_config(folder, body,
                                                                           tmp_path):
    kwargs = dict(steps=1, batch_size=1, val_size=0, body=body, progress=False, data=folder)
    start = tmp_path / "start.pt"
    trained = train_flow(start, config=TINY, lr=1e-2, **kwargs)
    tuned = train_flow(tmp_path / "tuned.pt", init_from=start, lr=1e-9, **kwargs)
    fresh = train_flow(tmp_path / "fresh.pt", config=TINY, lr=1e-9, **kwargs)
    assert tuned.config == TINY  # the starting network's config
    for a, b in zip(trained.parameters(), tuned.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert max(float((a - c).abs().max()) for a, c in zip(
        trained.state_dict().values(), fresh.state_dict().values(), strict=True)) > 1e-3
    settings = read_checkpoint(tmp_path / "tuned.pt")["training"]["settings"]
    assert settings["init_from"] == file_digest(start)
    with pytest.raises(ValueError, match="width: checkpoint 8, given 16"):
        train_flow(tmp_path / "other.pt", config=dataclasses.replace(TINY, width=16),
                   init_from=start, lr=1e-3, **kwargs)
    assert not list(tmp_path.glob("other.pt*"))  # refused before anything is written

    out = tmp_path / "cli.pt"  # a shipped network by name; its config without size options
    assert train_main(["flow", "--out", str(out), "--init-from", "open-notexture", "--data",
                       str(folder), "--steps", "1", "--batch-size", "1", "--val-size", "0",
                       "--device", "cpu", "--body", str(body.source)]) == 0
    assert load_flownet(out).config == load_flownet(flownet_path("open-notexture")).config


def bad_copy(folder, tmp_path, change):
    data = copy_folder(folder, tmp_path / "bad")
    change(data)
    return data


def drop_gt(data):
    (data / "gt.npz").unlink()


def drop_image(data):
    (data / "images" / "000002.png").unlink()


def short_betas(data):
    gt = gt_arrays(data)
    gt["betas"] = gt["betas"][:3]
    np.savez(data / "gt.npz", **gt)


def nan_transl(data):
    gt = gt_arrays(data)
    gt["transl"][1, 0] = np.nan
    np.savez(data / "gt.npz", **gt)


def behind(data):
    gt = gt_arrays(data)
    gt["transl"][3, 2] = -1.0
    np.savez(data / "gt.npz", **gt)


def drop_init(data):
    (data / "init.npz").unlink()


@pytest.mark.parametrize("change, extra, message", [
    (drop_gt, [], r"bad/gt.npz not found: training on a folder needs the ground-truth"),
    (drop_image, [], r"bad/gt.npz: key 'image_names' row 2 \('000002'\): no image "
                     r".*bad/images/000002.png\|jpg\|jpeg"),
    (short_betas, [], r"bad/gt.npz: key 'betas': expected shape \(4, 10\)"),
    (nan_transl, [], r"bad/gt.npz: key 'transl' row 1: non-finite value"),
    (behind, [], r"bad/gt.npz: key 'transl' row 3 \('000003'\): the body reaches behind"),
    (drop_init, ["--file-init", "0.5"], r"bad/init.npz not found"),
    (None, ["--data-mix", "1.5"], r"data_mix must lie in \[0, 1\], got 1.5"),
])
def test_the_cli_names_what_is_wrong_with_a_folder(folder, tmp_path, capsys, change, extra,
                                                   message):
    data = bad_copy(folder, tmp_path, change or (lambda data: None))
    out = tmp_path / "out" / "net.pt"
    assert train_main(["flow", "--out", str(out), "--data", str(data), "--steps", "1",
                       "--device", "cpu", *extra]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("python -m fitkit.train flow: error: ")
    assert re.search(message, line), line
    assert not out.parent.exists()


def test_the_cli_refuses_folder_options_without_a_folder_and_a_missing_network(tmp_path,
                                                                               capsys):
    out = tmp_path / "net.pt"
    assert train_main(["flow", "--out", str(out), "--data-mix", "0.5", "--steps", "1"]) == 2
    assert "give one (--data DIR)" in capsys.readouterr().err
    assert train_main(["flow", "--out", str(out), "--init-from", str(tmp_path / "none.pt"),
                       "--steps", "1"]) == 2
    assert re.search(r"displacement network not found: .*none\.pt", capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
