"""The HMR/SPIN regressor: IEF from the mean parameters, valid rotations, SPIN's checkpoint and
mean-parameter layouts loaded strictly, ``fitkit.regress`` in the full image's camera frame, and
``init="regress"`` in ``fit`` and ``refine``."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fitkit
from fitkit.geometry import (
    Camera,
    axis_angle_to_matrix,
    crop_images,
    pixels_to_crop,
    rot6d_to_matrix,
)
from fitkit.io.inputs import FitInputError
from fitkit.io.keypoint_formats import format_code
from fitkit.nets import (
    REGRESSOR_CONFIGS,
    CheckpointError,
    Regressor,
    RegressorConfig,
    load_network,
    open_mean_params,
    save_network,
)
from fitkit.nets.spin_official import MeanParamsError, load_official_spin, read_spin_state
from fitkit.regress import SHIPPED_REGRESSOR, person_boxes, person_crop, regress
from fitkit.synth import SynthConfig, generate_dataset

RESNET50_BLOCKS = (3, 4, 6, 3)


def spin_hmr_state(width: int = 64, blocks: tuple[int, ...] = RESNET50_BLOCKS,
                   hidden: int = 1024, counters: bool = False,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the layout of SPIN's ``models/hmr.py`` ``HMR`` (torchvision's ResNet
    names; written from that layout, not from fitkit's network), random values."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{name}.weight"] = 0.05 * torch.randn(out, inp, k, k, generator=generator)

    def bn(name: str, channels: int) -> None:
        state[f"{name}.weight"] = 1.0 + 0.1 * torch.randn(channels, generator=generator)
        state[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=generator)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=generator)
        state[f"{name}.running_var"] = 1.0 + torch.rand(channels, generator=generator)
        if counters:
            state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    def linear(name: str, out: int, inp: int) -> None:
        state[f"{name}.weight"] = 0.01 * torch.randn(out, inp, generator=generator)
        state[f"{name}.bias"] = 0.01 * torch.randn(out, generator=generator)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    channels = width
    for stage, count in enumerate(blocks):
        planes = width * 2 ** stage
        for block in range(count):
            prefix = f"layer{stage + 1}.{block}"
            conv(f"{prefix}.conv1", planes, channels, 1)
            bn(f"{prefix}.bn1", planes)
            conv(f"{prefix}.conv2", planes, planes, 3)
            bn(f"{prefix}.bn2", planes)
            conv(f"{prefix}.conv3", 4 * planes, planes, 1)
            bn(f"{prefix}.bn3", 4 * planes)
            if block == 0:
                conv(f"{prefix}.downsample.0", 4 * planes, channels, 1)
                bn(f"{prefix}.downsample.1", 4 * planes)
            channels = 4 * planes
    linear("fc1", hidden, channels + 144 + 13)
    linear("fc2", hidden, hidden)
    linear("decpose", 144, hidden)
    linear("decshape", 10, hidden)
    linear("deccam", 3, hidden)
    state["init_pose"] = torch.randn(1, 144, generator=generator)
    state["init_shape"] = torch.randn(1, 10, generator=generator)
    state["init_cam"] = torch.tensor([[0.9, 0.05, 0.2]])
    return state


def spin_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """``model_checkpoint.pt`` as SPIN's trainer writes it (state dict under ``model``)."""
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                "batch_idx": 0, "batch_size": 64, "total_step_count": 1000}, path)
    return path


def small_spin_state(**kwargs) -> dict[str, torch.Tensor]:
    """SPIN's layout with fitkit's small backbone (16 channels, one block per stage)."""
    return spin_hmr_state(width=16, blocks=(1, 1, 1, 1), hidden=64, **kwargs)


@pytest.fixture(scope="module")
def small_net_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised small regressor saved as a fitkit checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("regressor") / "small.pt"
    save_network(path, Regressor(RegressorConfig(image_size=64)))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 96 x 96 synthetic images with exact keypoints."""
    root = tmp_path_factory.mktemp("regress") / "data"
    config = SynthConfig(size=96, keypoint_noise="none")
    return generate_dataset(root, 2, seed=0, config=config, progress=False)


def images_of(root: Path) -> list[Path]:
    return sorted((root / "images").glob("*.png"))


def keypoints_of(root: Path) -> list[Path]:
    return [root / "keypoints" / f"{path.stem}_keypoints.json" for path in images_of(root)]


def test_forward_shapes_and_each_ief_step_adds_the_decoded_update() -> None:
    torch.manual_seed(0)
    config = RegressorConfig(image_size=64, iterations=3)
    net = Regressor(config).eval()
    step = {"decpose": 0.01 * torch.randn(144), "decshape": torch.randn(10),
            "deccam": torch.tensor([0.1, -0.2, 0.3])}
    with torch.no_grad():
        for name, bias in step.items():  # a constant update, whatever the input
            getattr(net, name).weight.zero_()
            getattr(net, name).bias.copy_(bias)
        out = net(torch.randn(2, 3, 64, 64))
    assert out["pose6d"].shape == (2, 144) and out["rotmat"].shape == (2, 24, 3, 3)
    assert out["global_orient"].shape == (2, 3) and out["body_pose"].shape == (2, 69)
    assert out["betas"].shape == (2, 10) and out["cam"].shape == (2, 3)
    mean = net.mean_params()
    for key, buffer, name in (("pose6d", "init_pose", "decpose"),
                              ("betas", "init_shape", "decshape"), ("cam", "init_cam", "deccam")):
        expected = mean[buffer] + config.iterations * step[name]
        torch.testing.assert_close(out[key], expected.expand(2, -1))


def test_untrained_network_starts_at_the_mean_parameters() -> None:
    torch.manual_seed(1)
    net = Regressor().eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 64, 64))
    mean = open_mean_params()
    assert (out["pose6d"] - mean["pose"]).abs().max() < 0.05
    assert (out["cam"] - mean["cam"]).abs().max() < 0.05
    # the open mean: upright and facing the camera (y down), mean shape
    root = rot6d_to_matrix(mean["pose"][:6])
    torch.testing.assert_close(root, torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    assert mean["shape"].abs().max() == 0
    assert mean["cam"][0] > 0


def test_rotations_are_orthonormal_and_match_the_axis_angle() -> None:
    torch.manual_seed(2)
    net = Regressor().eval()
    with torch.no_grad():
        net.decpose.bias.copy_(torch.randn(144))  # far from any rotation's 6D
        out = net(torch.randn(2, 3, 64, 64))
    rotmat = out["rotmat"]
    eye = torch.eye(3).expand_as(rotmat)
    torch.testing.assert_close(rotmat.transpose(-1, -2) @ rotmat, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotmat), torch.ones(2, 24), atol=1e-5, rtol=0)
    axis_angle = torch.cat([out["global_orient"][:, None], out["body_pose"].view(2, 23, 3)], 1)
    torch.testing.assert_close(axis_angle_to_matrix(axis_angle), rotmat, atol=1e-4, rtol=0)
    # the first column is the first 6D column, normalised (SPIN's layout)
    first = out["pose6d"].view(2, 24, 3, 2)[..., 0]
    torch.testing.assert_close(rotmat[..., 0], first / first.norm(dim=-1, keepdim=True))


def test_normalize_crops_takes_images_and_tensors_alike() -> None:
    net = Regressor()
    crops = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    as_float = crops.permute(0, 3, 1, 2).float() / 255.0
    torch.testing.assert_close(net.normalize_crops(crops), net.normalize_crops(as_float))
    white = net.normalize_crops(torch.ones(1, 3, 4, 4))
    torch.testing.assert_close(white[0, :, 0, 0], (1 - net.image_mean.flatten())
                               / net.image_std.flatten())
    with pytest.raises(ValueError, match=r"\(B, S, S, 3\)"):
        net.normalize_crops(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="64, 64"):
        net(torch.zeros(1, 3, 96, 96))


def test_a_keypoint_network_reads_the_points_it_was_made_for() -> None:
    with pytest.raises(ValueError, match="keypoint_format must be empty or one of"):
        RegressorConfig(keypoint_format="nope")
    torch.manual_seed(3)
    net = Regressor(RegressorConfig(keypoint_format="body25")).eval()
    assert net.config.keypoint_count == 25
    assert net.fc1.in_features == net.config.feature_dim + 75 + 157
    with torch.no_grad():
        net.decpose.weight.normal_()  # the output follows the input
    images = torch.randn(2, 3, 64, 64)
    points = torch.rand(2, 25, 3) * 2.0 - 1.0
    points[..., 2] = 0.8
    points[0, 4] = torch.tensor([0.3, 0.2, 0.0])  # not detected
    points[1, 4, 0] = torch.nan
    points[:, 7, :2] = 2.5  # outside the box
    with torch.no_grad():
        out = net(images, points)["pose6d"]
        moved = points.clone()
        moved[:, 3, :2] += 0.2
        assert (net(images, moved)["pose6d"] - out).abs().amax(dim=1).min() > 1e-3
        ignored = points.clone()
        ignored[0, 4, :2] = -0.9  # a point of confidence 0 does not count
        ignored[:, 7, :2] = 9.0  # nor does how far outside the box a point is
        torch.testing.assert_close(net(images, ignored)["pose6d"], out, atol=0, rtol=0)
    features = net.keypoint_features(points).view(2, 25, 3)
    assert features.isfinite().all() and (features[:, 7, :2] == 2.0).all()
    assert (features[0, 4] == 0).all() and (features[1, 4] == 0).all()
    with pytest.raises(ValueError, match="none were given"):
        net(images)
    with pytest.raises(ValueError, match=r"reads 25 keypoints \(body25\)"):
        net(images, points[:, :17])
    with pytest.raises(ValueError, match="crop alone; keypoints were given"):
        Regressor()(images, points)


def test_regress_gives_a_keypoint_network_the_crop_coordinates(tmp_path: Path) -> None:
    torch.manual_seed(4)
    net = Regressor(RegressorConfig(keypoint_format="body25")).eval()
    path = save_network(tmp_path / "kp.pt", net)
    seen = []
    net.keypoint_features = lambda points: seen.append(points) or Regressor.keypoint_features(
        net, points)
    images = np.zeros((2, 120, 160, 3), np.uint8)
    keypoints = np.random.default_rng(0).uniform(20.0, 100.0, (2, 25, 3))
    keypoints[..., 2] = 0.9
    keypoints[1, 5] = 0.0  # OpenPose's "not detected"
    estimate = regress(images, keypoints=keypoints, net=net, device="cpu")
    given = torch.as_tensor(keypoints, dtype=torch.float32)
    expected = torch.cat([pixels_to_crop(given[..., :2], estimate.box_center,
                                         estimate.box_size), given[..., 2:]], dim=-1)
    torch.testing.assert_close(seen[0], expected)
    loaded = load_network(path, "regressor")
    assert loaded.config.keypoint_format == "body25"
    again = regress(images, keypoints=keypoints, net=path, device="cpu")
    torch.testing.assert_close(again.params["body_pose"], estimate.params["body_pose"])
    with pytest.raises(FitInputError, match="body25 keypoints .* none were given"):
        regress(images, boxes=np.array([[0, 0, 50, 50]] * 2), net=path)
    with pytest.raises(FitInputError, match="reads body25 keypoints .25 points., got 17"):
        regress(images, keypoints=keypoints[:, :17], net=path)
    coco = Regressor(RegressorConfig(keypoint_format="coco17")).eval()
    h36m = {"keypoints": keypoints[:, :17],
            "keypoint_format": np.array([format_code("h36m17")] * 2)}
    with pytest.raises(FitInputError, match="reads coco17 keypoints .17 points., got files of "
                       "format h36m17"):
        regress(images, keypoints=h36m, net=coco)
    regress(images, keypoints={**h36m, "keypoint_format": np.zeros(2, int)}, net=coco)


def test_checkpoint_round_trip_through_the_registry(small_net_path: Path) -> None:
    net = load_network(small_net_path, "regressor")
    assert isinstance(net, Regressor) and net.config == RegressorConfig(image_size=64)
    torch.manual_seed(0)
    original = Regressor(RegressorConfig(image_size=64)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(images)["pose6d"], original(images)["pose6d"])


def test_a_checkpoint_from_before_the_keypoint_input_loads_as_image_only(
        small_net_path: Path, tmp_path: Path) -> None:
    state = torch.load(small_net_path, weights_only=True)
    del state["config"]["keypoint_format"]  # as fitkit wrote regressors before the field
    torch.save(state, tmp_path / "old.pt")
    old = load_network(tmp_path / "old.pt", "regressor")
    assert old.config == RegressorConfig(image_size=64) and old.config.keypoint_format == ""
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(old(images)["pose6d"],
                                   load_network(small_net_path)(images)["pose6d"])
    state["config"]["colour"] = 1
    torch.save(state, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match=r"unknown fields \['colour'\]"):
        load_network(tmp_path / "unknown.pt")


def test_spin_checkpoint_loads_strictly_into_resnet50(tmp_path: Path) -> None:
    state = spin_hmr_state()  # without BatchNorm counters, as older PyTorch wrote them
    path = spin_checkpoint(tmp_path / "model_checkpoint.pt", state)
    net = load_official_spin(path)
    assert net.config == REGRESSOR_CONFIGS["resnet50"] and not net.training
    loaded = net.state_dict()
    for key in ("conv1.weight", "layer3.5.bn2.running_var", "layer4.0.downsample.0.weight",
                "fc1.weight", "decpose.bias", "init_pose", "init_cam"):
        torch.testing.assert_close(loaded[key], state[key])
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 224, 224))
    assert out["rotmat"].shape == (1, 24, 3, 3) and out["cam"].isfinite().all()


def test_spin_checkpoint_errors_name_the_keys(tmp_path: Path) -> None:
    state = small_spin_state(counters=True)
    load_official_spin(spin_checkpoint(tmp_path / "ok.pt", state), image_size=64)
    renamed = dict(state)
    renamed["layer2.0.conv_2.weight"] = renamed.pop("layer2.0.conv2.weight")
    with pytest.raises(CheckpointError, match=r"missing keys \['layer2\.0\.conv2\.weight'\], "
                       r"unexpected keys \['layer2\.0\.conv_2\.weight'\]"):
        load_official_spin(spin_checkpoint(tmp_path / "renamed.pt", renamed), image_size=64)
    no_means = {key: value for key, value in state.items() if key != "init_cam"}
    with pytest.raises(CheckpointError, match="init_cam"):
        load_official_spin(spin_checkpoint(tmp_path / "no_means.pt", no_means), image_size=64)
    wrong = dict(state, **{"deccam.weight": torch.zeros(4, 64)})
    with pytest.raises(CheckpointError, match=r"deccam\.weight \(4, 64\)"):
        load_official_spin(spin_checkpoint(tmp_path / "wrong.pt", wrong), image_size=64)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_official_spin(tmp_path / "nowhere.pt")


class Payload:
    """A class a malicious checkpoint would have the unpickler call."""

    ran = False

    def __reduce__(self):
        return (Payload.trigger, ())

    @staticmethod
    def trigger() -> None:
        Payload.ran = True


def test_spin_checkpoint_that_names_code_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": small_spin_state(), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_spin_state(path)
    assert not Payload.ran
    path.write_bytes(pickle.dumps({"model": {}}, protocol=2))
    with pytest.raises(CheckpointError, match="evil.pt"):
        read_spin_state(path)


def test_mean_params_file_replaces_the_checkpoint_means(tmp_path: Path) -> None:
    state = small_spin_state()
    checkpoint = spin_checkpoint(tmp_path / "model.pt", state)
    means = {"pose": np.random.default_rng(0).normal(size=144),
             "shape": np.arange(10, dtype=np.float64), "cam": np.array([0.8, 0.0, 0.1])}
    np.savez(tmp_path / "smpl_mean_params.npz", **means)
    net = load_official_spin(checkpoint, tmp_path / "smpl_mean_params.npz", image_size=64)
    np.testing.assert_allclose(net.init_pose[0].numpy(), means["pose"], rtol=1e-6)
    np.testing.assert_allclose(net.init_shape[0].numpy(), means["shape"])
    np.testing.assert_allclose(net.init_cam[0].numpy(), means["cam"], rtol=1e-6)
    torch.testing.assert_close(net.state_dict()["fc2.weight"], state["fc2.weight"])
    np.savez(tmp_path / "bad.npz", pose=means["pose"], shape=means["shape"])
    with pytest.raises(MeanParamsError, match=r"bad\.npz: key 'cam'"):
        load_official_spin(checkpoint, tmp_path / "bad.npz", image_size=64)
    np.savez(tmp_path / "short.npz", pose=means["pose"][:72], shape=means["shape"],
             cam=means["cam"])
    with pytest.raises(MeanParamsError, match=r"key 'pose'.*144"):
        load_official_spin(checkpoint, tmp_path / "short.npz", image_size=64)


def test_boxes_come_from_the_box_else_the_keypoints_else_the_image() -> None:
    size = torch.tensor([[200.0, 100.0]] * 3)
    keypoints = torch.zeros(3, 25, 3)
    keypoints[:2, :, 0] = torch.linspace(100, 140, 25)
    keypoints[:2, :, 1] = torch.linspace(30, 70, 25)
    keypoints[:2, :, 2] = 0.9
    keypoints[0, 0] = torch.tensor([5.0, 5.0, 0.05])  # below the confidence: not used
    boxes = torch.tensor([[10.0, 20.0, 40.0, 80.0]] + [[float("nan")] * 4] * 2)
    center, side, source = person_boxes(size, boxes, keypoints)
    assert source == ["box", "keypoints", "image"]
    low, high = center - side[:, None] / 2, center + side[:, None] / 2
    assert (low[0] <= torch.tensor([10.0, 20.0])).all()  # holds the person box
    assert (high[0] >= torch.tensor([40.0, 80.0])).all()
    assert (low[0] >= -0.5).all() and side[0] <= 100  # inside the image
    # the low-confidence point at (5, 5) is left out of the keypoint box
    torch.testing.assert_close(center[1], torch.tensor([120.0, 50.0]))
    torch.testing.assert_close(side[1], torch.tensor(40.0 / 0.7))
    torch.testing.assert_close(center[2], torch.tensor([99.5, 49.5]))
    assert side[2] == 200


def test_person_crop_is_the_geometry_crop_of_the_box_without_aliasing() -> None:
    image = np.random.default_rng(0).integers(0, 255, (100, 150, 3), dtype=np.uint8)
    full = torch.as_tensor(image).permute(2, 0, 1)[None].float() / 255.0
    for center, side in (((70.0, 40.0), 100.0), ((10.0, 90.0), 60.0), ((400.0, 40.0), 50.0)):
        torch.testing.assert_close(  # boxes under twice the crop: the same samples
            person_crop(image, torch.tensor(center), side, 64),
            crop_images(full, torch.tensor([center]), torch.tensor([side]), 64),
            atol=1e-4, rtol=0)
    v, u = np.mgrid[0:256, 0:256]
    ramp = np.stack([u, v, (u + v) // 2], axis=-1).astype(np.uint8)  # one level per pixel
    full = torch.as_tensor(ramp).permute(2, 0, 1)[None].float() / 255.0
    pooled = person_crop(ramp, torch.tensor([127.5, 127.5]), 200.0, 64)  # 3 x 3 blocks
    sampled = crop_images(full, torch.tensor([[127.5, 127.5]]), torch.tensor([200.0]), 64)
    # a ramp is its own block average (up to rounding to bytes); a block misplaced by a
    # pixel would be off by a level everywhere
    assert (pooled - sampled).abs().max() <= 1.01 / 255
    assert (pooled - sampled).abs().mean() < 0.2 / 255
    noise = np.random.default_rng(1).integers(0, 255, (600, 900, 3), dtype=np.uint8)
    smooth = person_crop(noise, torch.tensor([450.0, 300.0]), 400.0, 64)
    assert smooth.std() < 0.5 * (torch.as_tensor(noise).float() / 255.0).std()


def test_regress_places_the_body_by_the_full_frame_camera(small_net_path: Path) -> None:
    net = load_network(small_net_path, "regressor")
    weak = torch.tensor([0.6, 0.1, -0.15])
    with torch.no_grad():  # a known crop camera, whatever the image
        net.deccam.weight.zero_()
        net.deccam.bias.copy_((weak - net.init_cam[0]) / net.config.iterations)
    images = np.random.default_rng(0).integers(0, 255, (2, 120, 160, 3), dtype=np.uint8)
    boxes = np.array([[20.0, 10.0, 60.0, 90.0], [90.0, 40.0, 150.0, 110.0]])
    estimate = regress(images, boxes=boxes, net=net, device="cpu")
    assert estimate.box_source == ["box", "box"]
    torch.testing.assert_close(estimate.weak_camera, weak.expand(2, -1))
    camera = Camera.default(torch.tensor([[160.0, 120.0]] * 2))
    torch.testing.assert_close(estimate.params["focal_length"], camera.focal_length)
    torch.testing.assert_close(estimate.params["camera_center"], camera.principal_point)
    params = {key: estimate.params[key] for key in
              ("global_orient", "body_pose", "betas", "transl")}
    body = fitkit.load_body("open")
    with torch.no_grad():
        joints = body(**params).joints
        posed = body(**{**params, "transl": torch.zeros(2, 3)}).joints
    crop = pixels_to_crop(camera.project(joints), estimate.box_center, estimate.box_size)
    weak_crop = weak[0] * (posed[..., :2] + weak[1:])  # where the crop camera puts them
    # exact at the pelvis (depth ~0 in the body frame), elsewhere up to depth / distance
    torch.testing.assert_close(crop[:, 0], weak_crop[:, 0], atol=1e-4, rtol=0)
    assert (crop - weak_crop).abs().max() < 0.06
    assert crop.abs().max() < 1.0  # every joint inside its crop box
    assert estimate.params["transl"][:, 2].min() > 0


def test_regress_errors_are_clear(small_net_path: Path) -> None:
    images = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(FitInputError, match="boxes must have shape"):
        regress(images, boxes=np.zeros((2, 3)), net=small_net_path)
    with pytest.raises(FitInputError, match="1 rows of keypoints for 2 images"):
        regress(images, keypoints=np.zeros((1, 25, 3)), net=small_net_path)
    shipped = Path(fitkit.nets.__file__).parent / "data" / SHIPPED_REGRESSOR
    if not shipped.is_file():
        with pytest.raises(FileNotFoundError, match=SHIPPED_REGRESSOR):
            regress(images)
    with pytest.raises(FitInputError, match="init='regress'"):
        fitkit.fit(None, init="regress", keypoints=np.zeros((1, 25, 3)),
                   camera=Camera.default(torch.tensor([[64.0, 64.0]])))


def test_fit_with_init_regress_starts_from_the_regressor(dataset: Path,
                                                         small_net_path: Path) -> None:
    images, keypoints = images_of(dataset), keypoints_of(dataset)
    estimate = fitkit.regress(images, keypoints=keypoints, net=small_net_path)
    assert estimate.box_source == ["keypoints", "keypoints"]
    settings = {"keypoints": keypoints, "iterations": 5}
    result = fitkit.fit(images, init="regress", regress_net=small_net_path, **settings)
    assert not (result.flags["bad_input"] | result.flags["nan"]).any()
    assert result.energy.isfinite().all()
    same = fitkit.fit(images, init=estimate, **settings)
    for key in ("global_orient", "body_pose", "transl"):
        torch.testing.assert_close(result.params[key], same.params[key])
    scratch = fitkit.fit(images, init=None, **settings)
    assert not torch.allclose(result.params["body_pose"], scratch.params["body_pose"])


def test_refine_regress_net_without_init_regress_exits_2(dataset: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    from fitkit.refine.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--input", str(dataset), "--output", str(tmp_path / "out"),
              "--regress-net", "net.pt"])
    assert done.value.code == 2
    assert "--regress-net is used only with --init regress" in capsys.readouterr().err


def test_refine_init_regress(dataset: Path, small_net_path: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    from fitkit.refine.cli import main

    folder = tmp_path / "no_init"
    shutil.copytree(dataset, folder, ignore=shutil.ignore_patterns("init.npz"))
    common = ["--output", str(tmp_path / "out"), "--iterations", "3", "--overlays", "0",
              "--quiet", "--init", "regress", "--regress-net", str(small_net_path)]
    assert main(["--input", str(dataset), *common]) == 2
    assert "init.npz exists" in capsys.readouterr().err
    assert main(["--input", str(folder), *common]) == 0
    results = np.load(tmp_path / "out" / "results.npz")
    estimate = fitkit.regress(images_of(folder), keypoints=keypoints_of(folder),
                              net=small_net_path)
    np.testing.assert_allclose(results["focal_length"], estimate.params["focal_length"])
    assert not results["flag_bad_input"].any() and np.isfinite(results["body_pose"]).all()


def test_refine_init_regress_with_a_keypoint_network_names_a_missing_keypoint_file(
        dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fitkit.refine.cli import main

    folder = tmp_path / "no_keypoints"
    shutil.copytree(dataset, folder, ignore=shutil.ignore_patterns("init.npz", "keypoints"))
    net = save_network(tmp_path / "kp.pt", Regressor(RegressorConfig(keypoint_format="body25")))
    code = main(["--input", str(folder), "--output", str(tmp_path / "out"), "--data-term",
                 "densepose", "--quiet", "--init", "regress", "--regress-net", str(net)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "reads the person's body25 keypoints" in err and "_keypoints.json is missing" in err
