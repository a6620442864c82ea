"""Predicted flow: crops, the network's field back in image pixels, textures, fit and refine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fitkit
from fitkit.api import FitInputError
from fitkit.body import load_body
from fitkit.geometry import Camera, crop_boxes, crop_camera, crop_images
from fitkit.io import read_params
from fitkit.nets import FlowNet, FlowNetConfig, save_flownet
from fitkit.nets.predict import SHIPPED_FLOWNETS, FlowPredictor, flownet_path
from fitkit.refine import main as refine_main
from fitkit.render import rasterize, vertex_visibility
from fitkit.synth import SynthConfig, generate_dataset

TINY = FlowNetConfig(image_size=64, width=8, stacks=1, depth=2, encoder_blocks=1,
                     displacement_scale=2.0)


@pytest.fixture(scope="module")
def body():
    return load_body("open")


def constant_net(config: FlowNetConfig, du: float, dv: float) -> FlowNet:
    """A network whose every pixel's displacement is ``(du, dv)`` (its heads are zero but for
    their bias)."""
    net = FlowNet(config)
    head = net.hourglass.heads[-1]
    with torch.no_grad():
        head.bias.copy_(torch.tensor([du, dv]) / config.displacement_scale)
    return net.eval()


def scene(body, batch: int = 2, width: int = 160, height: int = 128):
    """Bodies facing the camera at different places, their cameras and random images."""
    orient = torch.tensor([[np.pi, 0.0, 0.0]]).expand(batch, -1)
    transl = torch.tensor([[0.1 * i, 0.05, 4.0 + 0.5 * i] for i in range(batch)])
    output = body(global_orient=orient, transl=transl)
    camera = Camera.from_image_size(width, height, batch)
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    return output, camera, images


def test_crops_frame_the_person_and_stay_inside_the_image_where_they_can():
    points = torch.tensor([[[20.0, 10.0], [40.0, 80.0]], [[170.0, 30.0], [199.0, 60.0]]])
    center, side = crop_boxes(points)
    assert torch.allclose(side, torch.tensor([70.0, 30.0]) / 0.7)
    assert torch.allclose(center, (points[:, 0] + points[:, 1]) / 2)
    size = torch.tensor([[200.0, 100.0], [200.0, 100.0]])
    center, side = crop_boxes(points, image_size=size)
    # the first: 70 / 0.7 = 100 fits the image's height exactly; moved right and down into it,
    # so that it covers pixels 0-99 (edges at -0.5 and 99.5)
    assert torch.allclose(center[0], torch.tensor([49.5, 49.5])) and float(side[0]) == 100.0
    # the second: 42.9 px wide, shifted left so that it ends at the image's right edge
    assert float(center[1, 0] + side[1] / 2) == pytest.approx(199.5)
    tall = torch.tensor([[[10.0, 0.0], [20.0, 99.0]]])  # fills 99 % of the height
    _, side = crop_boxes(tall, image_size=size[:1])
    assert float(side[0]) == pytest.approx(99.0 / 0.9)  # fill capped at MAX_FILL


def test_a_crop_and_its_camera_show_the_same_picture(body):
    output, camera, _ = scene(body, batch=1)
    center, side = crop_boxes(camera.project(output.vertices))
    crop = crop_camera(camera, center, side, 64)
    in_crop = rasterize(output.vertices, body.faces, crop).mask[0]
    # the full image rendered 4x finer, its box resampled and averaged back to 64 x 64
    fine = Camera(camera.focal_length * 4, (camera.principal_point + 0.5) * 4 - 0.5,
                  camera.image_size * 4)
    mask = rasterize(output.vertices, body.faces, fine).mask.float()[:, None]
    fine_center = (center + 0.5) * 4 - 0.5
    resampled = F.avg_pool2d(crop_images(mask, fine_center, side * 4, 256), 4)[0, 0] > 0.5
    iou = (resampled & in_crop).sum() / (resampled | in_crop).sum()
    assert iou > 0.95
    centre = [m.nonzero().float().mean(0) for m in (resampled, in_crop)]
    assert torch.allclose(centre[0], centre[1], atol=0.2)


def test_a_constant_field_moves_every_visible_vertex_by_it_in_image_pixels(body):
    output, camera, images = scene(body)
    predictor = FlowPredictor(constant_net(TINY, 3.0, -1.5), body)
    prediction = predictor(images, output, camera)
    scale = prediction.box_size / TINY.image_size  # image pixels per crop pixel
    shift = torch.stack([3.0 * scale, -1.5 * scale], dim=-1)[:, None]
    expected = camera.project(output.vertices) + shift
    visible = prediction.visible
    assert torch.allclose(prediction.targets[visible], expected.expand_as(prediction.targets)
                          [visible], atol=1e-4)
    assert torch.all(prediction.targets[~visible] == 0)
    # the visible vertices are those of the initial mesh seen in the crop
    seen = vertex_visibility(
        rasterize(output.vertices, body.faces, prediction.camera), body.faces,
        body.num_vertices)
    assert torch.equal(visible, seen) and visible.sum(1).min() > 500
    assert prediction.displacements.shape == (2, 2, 64, 64)
    assert torch.all(prediction.displacements.permute(1, 0, 2, 3)[:, ~prediction.mask] == 0)


def test_textures_are_estimated_given_or_taken_from_the_next_sample(body):
    output, camera, images = scene(body)
    predictor = FlowPredictor(constant_net(TINY, 0.0, 0.0), body, texture_size=64)
    own = predictor(images, output, camera).texture
    other = predictor(images, output, camera, texture="other").texture
    assert own.shape == (2, 3, 64, 64) and not torch.equal(own[0], own[1])
    assert torch.equal(other, own.roll(-1, dims=0))
    grey = torch.full((3, 32, 32), 0.5)
    assert torch.equal(predictor(images, output, camera, texture=grey).texture[1], grey)
    with pytest.raises(ValueError, match="unknown texture 'wrong'"):
        predictor(images, output, camera, texture="wrong")
    with pytest.raises(ValueError, match=r"texture must have shape"):
        predictor(images, output, camera, texture=torch.zeros(3, 3, 8, 8))
    blind = FlowPredictor(constant_net(dataclasses.replace(TINY, texture=False), 0, 0), body)
    assert blind(images, output, camera, texture="wrong").texture is None
    with pytest.raises(ValueError, match=r"images must have shape \(2, 3, H, W\)"):
        predictor(images[:1], output, camera)


def test_unknown_networks_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt.*open, open-notexture"):
        flownet_path(tmp_path / "absent.pt")
    assert set(SHIPPED_FLOWNETS) == {"open", "open-notexture"}


@pytest.mark.parametrize("name", sorted(SHIPPED_FLOWNETS))
def test_the_shipped_networks_are_small_and_beat_no_displacement_on_unseen_samples(name, body):
    from fitkit.nets import load_flownet
    from fitkit.train.flow import FlowBatchMaker, evaluate

    path = flownet_path(name)
    assert path.stat().st_size < 2_000_000
    net = load_flownet(path)
    assert net.config.texture is (name == "open")
    # world seed 3: the networks trained on seed 0 and were validated on seed 0 too
    batch = FlowBatchMaker(body, net.config).make(3, list(range(8)))
    epe, zero = evaluate(net, [batch], "cpu")
    assert epe < 0.75 * zero


@pytest.mark.parametrize("texture", [None, "estimate", "textures"])
def test_fit_with_predicted_flow_runs_end_to_end_on_the_open_assets(tmp_path, body, texture):
    data = generate_dataset(tmp_path / "data", 2, seed=3, config=SynthConfig(size=128),
                            progress=False)
    images = sorted((data / "images").iterdir())
    if texture == "textures":  # the subjects' true textures, (B, 3, T, T)
        texture = torch.stack([torch.as_tensor(np.array(Image.open(path))).permute(2, 0, 1)
                               for path in sorted((data / "textures").iterdir())]) / 255.0
    result = fitkit.fit(images, init=data / "init.npz", data_term="flow", iterations=5,
                        texture=texture, device="cpu")
    init = read_params(data / "init.npz")
    assert torch.isfinite(result.params["body_pose"]).all()
    assert not np.allclose(result.params["body_pose"].numpy(), init["body_pose"])
    assert (result.terms["flow"] > 0).all()
    assert not any(bool(flag.any()) for flag in result.flags.values())
    with pytest.raises(FitInputError, match="needs initial parameters"):
        fitkit.fit(images, data_term="flow", iterations=1, device="cpu")
    with pytest.raises(FitInputError, match="unknown texture 'plaid'"):
        fitkit.fit(images, init=data / "init.npz", data_term="flow", texture="plaid",
                   device="cpu")
    with pytest.raises(FitInputError, match="flow_net: .*absent.pt"):
        fitkit.fit(images, init=data / "init.npz", data_term="flow", iterations=1,
                   flow_net=tmp_path / "absent.pt", device="cpu")


def flow_dataset(tmp_path: Path, num: int, seed: int, shift: float) -> tuple[Path, Path]:
    """A synthetic dataset of 128 x 128 images and a constant-field network's checkpoint."""
    data = generate_dataset(tmp_path / "data", num, seed=seed, config=SynthConfig(size=128),
                            progress=False)
    return data, save_flownet(tmp_path / "net.pt", constant_net(TINY, shift, shift))


def test_refine_predicts_flow_with_a_given_network_and_flags_a_missing_image(tmp_path, body):
    data, net = flow_dataset(tmp_path, 3, seed=4, shift=0.5)
    (data / "images" / "000001.png").unlink()
    out = tmp_path / "out"
    args = ["--input", str(data), "--output", str(out), "--data-term", "flow", "--flow-net",
            str(net), "--texture", "other", "--overlays", "0", "--iterations", "3", "--quiet"]
    assert refine_main(args) == 0
    results = read_params(out / "results.npz")
    assert results["flag_bad_input"].tolist() == [False, True, False]
    assert "000001.png" in str(results["error"][1])
    assert results["flag_no_data"].tolist() == [False, True, False]
    progress = json.loads((out / "settings.json").read_text())["settings"]
    assert progress["flow"] == "predicted" and progress["texture"] == "other"
    assert progress["flow_net"] == str(net)
    assert refine_main([*args[:4], "--output", str(tmp_path / "o2"), "--data-term", "flow",
                        "--flow-net", str(Path(tmp_path) / "absent.pt")]) == 2


def test_refine_reads_textures_from_a_folder_and_flags_a_missing_one(tmp_path, body):
    data, net = flow_dataset(tmp_path, 2, seed=5, shift=0.0)
    (data / "textures" / "000000.png").unlink()
    out = tmp_path / "out"
    args = ["--input", str(data), "--data-term", "flow", "--flow-net", str(net), "--overlays",
            "0", "--iterations", "2", "--quiet"]
    assert refine_main([*args, "--output", str(out), "--texture", str(data / "textures")]) == 0
    results = read_params(out / "results.npz")
    assert results["flag_bad_input"].tolist() == [True, False]
    assert "texture" in str(results["error"][0]) and "000000.png" in str(results["error"][0])
    assert refine_main([*args, "--output", str(tmp_path / "o2"), "--texture", "sideways"]) == 2


def test_images_of_two_sizes_are_predicted_size_by_size(body):
    from fitkit.api import Fitter

    fitter = Fitter("flow", None, body=body, device="cpu",
                    flow_net=constant_net(dataclasses.replace(TINY, texture=False), 2.0, 0.0))
    output, _, _ = scene(body, batch=3)
    params = {"global_orient": torch.tensor([[np.pi, 0.0, 0.0]]).expand(3, -1),
              "body_pose": torch.zeros(3, 69), "betas": torch.zeros(3, 10),
              "transl": torch.tensor([[0.1 * i, 0.05, 4.0 + 0.5 * i] for i in range(3)])}
    sizes = [(128, 160), (96, 96), (128, 160)]
    camera = Camera(torch.tensor([[200.0, 200.0]] * 3),
                    torch.tensor([[(w - 1) / 2, (h - 1) / 2] for h, w in sizes]),
                    torch.tensor([[float(w), float(h)] for h, w in sizes]))
    images = [np.zeros((h, w, 3), np.uint8) for h, w in sizes]
    mixed = fitter.predict_flow(images, camera, params)
    for index in range(3):
        alone = fitter.predict_flow(images[index:index + 1], camera[index],
                                    {key: value[index:index + 1] for key, value in params.items()})
        assert torch.equal(alone["visible"][0], mixed["visible"][index])
        assert torch.allclose(alone["targets"][0], mixed["targets"][index])


def test_more_flow_rounds_predict_again_from_the_fit(body, monkeypatch):
    from fitkit.api import Fitter

    net = constant_net(dataclasses.replace(TINY, texture=False), 4.0, 0.0)
    output, camera, images = scene(body, batch=1)
    params = {"global_orient": torch.tensor([[np.pi, 0.0, 0.0]]), "body_pose": torch.zeros(1, 69),
              "betas": torch.zeros(1, 10), "transl": torch.tensor([[0.0, 0.05, 4.0]])}
    pixels = [(images[0].permute(1, 2, 0) * 255).byte().numpy()]
    sizes = np.array([[160, 128]])
    shifts = {}
    for rounds in (1, 2):
        fitter = Fitter("flow", None, body=body, device="cpu", flow_net=net, flow_rounds=rounds,
                        iterations=30, lr=0.02)
        calls = []
        original = fitter.predict_flow
        monkeypatch.setattr(fitter, "predict_flow",
                            lambda *a, original=original, calls=calls: calls.append(1)
                            or original(*a))
        result = fitter(sizes, params, camera, images=pixels)
        assert len(calls) == rounds
        shifts[rounds] = float(result.params["transl"][0, 0] - params["transl"][0, 0])
    # a constant rightward field: the second round moves the body further right
    assert 0 < shifts[1] < shifts[2]
    with pytest.raises(FitInputError, match="flow_rounds must be at least 1"):
        Fitter("flow", None, body=body, flow_rounds=0)


def test_flow_colors_code_direction_as_hue_and_length_as_saturation():
    from fitkit.render import flow_colors

    field = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 2, 2)
    mask = torch.tensor([[[True, True], [True, False]]])
    rgb = flow_colors(field, mask)
    assert torch.allclose(rgb[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # right: red
    assert torch.allclose(rgb[0, 0, 1], torch.tensor([0.5, 1.0, 0.0]))  # down: yellow-green
    assert torch.allclose(rgb[0, 1, 0], torch.tensor([1.0, 0.5, 0.5]))  # half length: paler
    assert torch.equal(rgb[0, 1, 1], torch.ones(3))  # masked out: background
    assert torch.allclose(flow_colors(torch.zeros(1, 2, 1, 1))[0, 0, 0], torch.ones(3))
