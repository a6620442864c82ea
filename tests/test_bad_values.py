"""Values, not only shapes: images (bit depth, modes, size limits, DensePose part ids), initial
parameters and cameras (a bad sample is flagged ``bad_input`` and the others are fitted exactly as
without it), settings (finite, weights >= 0, registered term names), ``metrics.json`` (strict
JSON, counts consistent with means), and metrics that never report 0 for what they cannot
measure."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fitkit
from fitkit.eval import body_metrics, end_point_error, mpjpe
from fitkit.fitter import Fitter, fit_config
from fitkit.fitting import FLAG_NAMES, FitResult, StageConfig, preset
from fitkit.fitting.plausibility import PLAUSIBILITY_FLAGS
from fitkit.geometry import Camera
from fitkit.io import inputs, read_params
from fitkit.io.dataset import open_dataset
from fitkit.io.inputs import FitInputError, image_sizes, read_images, read_init, read_iuv
from fitkit.refine import main, report
from fitkit.synth import SynthConfig, generate_dataset
from fitkit.viz import PAD

NUM = 3
FAST = {"iterations": 3}
PARAMS = ("global_orient", "body_pose", "betas", "transl", "focal_length", "camera_center")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 128 x 128 synthetic images with keypoints, DensePose, init and gt."""
    root = tmp_path_factory.mktemp("bad_values") / "data"
    return generate_dataset(root, NUM, seed=0, config=SynthConfig(size=128), progress=False)


def files(root: Path, folder: str, suffix: str) -> list[Path]:
    return [root / folder / f"{i:06d}{suffix}" for i in range(NUM)]


def init_arrays(root: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in read_params(root / "init.npz").items() if k != "image_names"}


@pytest.fixture(scope="module")
def fit_without_1(dataset: Path) -> FitResult:
    """Samples 0 and 2 fitted on their own: what a batch with a bad sample 1 must reproduce."""
    init = {key: value[[0, 2]] for key, value in init_arrays(dataset).items()}
    images, keypoints = files(dataset, "images", ".png"), files(dataset, "keypoints",
                                                                  "_keypoints.json")
    return fitkit.fit([images[0], images[2]], init=init, keypoints=[keypoints[0], keypoints[2]],
                      **FAST)


def fit_with(dataset: Path, init: dict[str, np.ndarray], **kwargs) -> FitResult:
    return fitkit.fit(files(dataset, "images", ".png"), init=init,
                      keypoints=files(dataset, "keypoints", "_keypoints.json"), **FAST, **kwargs)


def png(path: Path, rows: np.ndarray, bit_depth: int, color_type: int,
        size: tuple[int, int] | None = None) -> Path:
    """A PNG written byte by byte (PIL cannot write 16-bit RGB); ``size`` overrides the
    header's (a 'decompression bomb' header over a few bytes of data)."""
    height, width = rows.shape[:2]
    width, height = size or (width, height)
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + row.astype(dtype).tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def strict_json(path: Path) -> dict:
    """``path`` parsed as strict JSON (``NaN`` / ``Infinity`` fail)."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------- images


def test_a_16_bit_greyscale_png_is_scaled_by_its_bit_depth(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    image, = read_images(tmp_path / "grey16.png")
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]  # not all white
    assert (image == image[..., :1]).all()


def test_a_16_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    rows = np.zeros((2, 3, 3), np.uint16)
    rows[..., 0], rows[..., 1], rows[..., 2] = 65535, 32896, 257
    image, = read_images(png(tmp_path / "rgb16.png", rows, 16, 2))
    assert image[0, 0].tolist() == [255, 128, 1]


def test_greyscale_palette_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 100, 255]], np.uint8), "L").save(tmp_path / "grey.png")
    assert read_images(tmp_path / "grey.png")[0][0].tolist() == [[0] * 3, [100] * 3, [255] * 3]
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50])
    palette.putdata([0, 1])
    palette.save(tmp_path / "palette.png", transparency=0)
    assert read_images(tmp_path / "palette.png")[0][0].tolist() == [[10, 20, 30], [200, 100, 50]]
    rgba = np.array([[[1, 2, 3, 0], [4, 5, 6, 255]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert read_images(tmp_path / "rgba.png")[0][0].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_image_arrays_are_checked_and_16_bit_arrays_scaled() -> None:
    assert read_images(np.full((2, 2, 3), 65535, np.uint16))[0].max() == 255
    assert read_images(np.full((2, 2, 3), 0.5, np.float32))[0].max() == 128
    with pytest.raises(FitInputError, match="non-finite pixel"):
        read_images(np.full((2, 2, 3), np.nan, np.float32))
    with pytest.raises(FitInputError, match="int64 values from 0 to 300.*not 8-bit"):
        read_images(np.array([[[0, 0, 300]]], np.int64))


def test_an_image_over_the_size_limit_is_refused_naming_the_file(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inputs, "MAX_IMAGE_PIXELS", 100 * 100)
    image = files(dataset, "images", ".png")[1]
    with pytest.raises(FitInputError, match=r"000001.png: image too large \(128 x 128\).*"
                                            "MAX_IMAGE_PIXELS"):
        image_sizes(image)
    with pytest.raises(FitInputError, match="000001.png: image too large"):
        read_images(image)
    errors = [""] * NUM
    sizes = image_sizes(files(dataset, "images", ".png"), errors)
    assert sizes.tolist() == [[0, 0]] * NUM and all("image too large" in e for e in errors)


def test_a_decompression_bomb_is_a_clear_error_not_a_pil_exception(tmp_path: Path) -> None:
    bomb = png(tmp_path / "bomb.png", np.zeros((1, 1), np.uint8), 1, 0, size=(20000, 20000))
    with pytest.raises(FitInputError, match="bomb.png: image too large.*MAX_IMAGE_PIXELS"):
        image_sizes(bomb)


def test_corrupt_and_truncated_images_name_the_file(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(FitInputError, match="text.png: not a readable image"):
        read_images(tmp_path / "text.png")
    data = files(dataset, "images", ".png")[0].read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FitInputError, match="cut.png: not a readable image"):
        read_images(tmp_path / "cut.png")


# --------------------------------------------------------------------------- DensePose IUV


def test_an_iuv_part_id_above_24_is_that_samples_error(dataset: Path, tmp_path: Path) -> None:
    paths = files(dataset, "densepose", "_IUV.png")
    bad = np.asarray(Image.open(paths[1])).copy()
    bad[0, 0, 2] = 30  # the file's blue channel holds I
    Image.fromarray(bad).save(tmp_path / "bad_IUV.png")
    errors = [""] * NUM
    iuv = read_iuv([paths[0], tmp_path / "bad_IUV.png", paths[2]], errors)
    assert errors[0] == errors[2] == ""
    assert "bad_IUV.png" in errors[1] and "part id I = 30 > 24" in errors[1]
    assert not iuv[1].any() and iuv[0].any() and iuv[2].any()
    with pytest.raises(FitInputError, match="bad_IUV.png.*I = 30"):
        fitkit.fit(files(dataset, "images", ".png"), init=dataset / "init.npz",
                   data_term="densepose", iuv=[paths[0], tmp_path / "bad_IUV.png", paths[2]])


def test_a_16_bit_or_non_rgb_iuv_file_is_refused_per_sample(dataset: Path, tmp_path: Path) -> None:
    good = files(dataset, "densepose", "_IUV.png")[0]
    rows = np.asarray(Image.open(good)).astype(np.uint16)
    png(tmp_path / "deep_IUV.png", rows, 16, 2)
    Image.open(good).convert("L").save(tmp_path / "grey_IUV.png")
    errors = [""] * 3
    read_iuv([good, tmp_path / "deep_IUV.png", tmp_path / "grey_IUV.png"], errors)
    assert errors[0] == ""
    assert "deep_IUV.png" in errors[1] and "must be 8-bit RGB" in errors[1]
    assert "got 16-bit RGB" in errors[1]
    assert "grey_IUV.png" in errors[2] and "8-bit L" in errors[2]


def test_iuv_arrays_are_checked_row_by_row() -> None:
    iuv = np.zeros((2, 4, 4, 3), np.uint8)
    iuv[1, 0, 0, 0] = 25
    with pytest.raises(FitInputError, match=r"iuv\[1\]: DensePose part id I = 25 > 24"):
        read_iuv(iuv)
    errors = ["", ""]
    read_iuv(iuv, errors)
    assert errors[0] == "" and errors[1].startswith("iuv[1]")
    with pytest.raises(FitInputError, match="integers in 0-255.*float32"):
        read_iuv(np.full((1, 4, 4, 3), 0.5, np.float32))


# --------------------------------------------------------------------------- parameters, cameras


def test_inf_transl_is_flagged_and_the_others_fit_bit_for_bit_as_without_it(
    dataset: Path, fit_without_1: FitResult
) -> None:
    init = init_arrays(dataset)
    init["transl"][1, 2] = np.inf
    result = fit_with(dataset, init)
    assert result.flags["bad_input"].tolist() == [False, True, False]
    assert not result.ok[1] and torch.equal(result.ok[[0, 2]], fit_without_1.ok)
    assert result.errors[0] == result.errors[2] == ""
    assert result.errors[1].startswith("init transl is not finite") and "inf" in result.errors[1]
    for key in PARAMS:
        assert torch.equal(result.params[key][[0, 2]], fit_without_1.params[key]), key
    assert torch.equal(result.vertices[[0, 2]], fit_without_1.vertices)
    assert torch.equal(result.energy[[0, 2]], fit_without_1.energy)
    # the bad sample keeps its values, and has no energy
    np.testing.assert_array_equal(result.params["transl"][1].numpy(), init["transl"][1])
    assert torch.equal(result.params["body_pose"][1], torch.as_tensor(init["body_pose"][1]))
    assert result.energy[1].isnan() and all(v[1].isnan() for v in result.terms.values())


def test_nan_pose_is_flagged_naming_the_parameter(dataset: Path) -> None:
    init = init_arrays(dataset)
    init["body_pose"][0, 5] = np.nan
    result = fit_with(dataset, init)
    assert result.flags["bad_input"].tolist() == [True, False, False]
    assert result.errors[0] == "init body_pose is not finite: 69 values, non-finite at 5: nan"
    assert torch.isfinite(result.params["body_pose"][1:]).all()


def test_a_body_at_or_behind_the_camera_is_flagged(dataset: Path) -> None:
    init = init_arrays(dataset)
    init["transl"][2, 2] = -1.5
    init["transl"][0, 2] = 0.0
    result = fit_with(dataset, init)
    assert result.flags["bad_input"].tolist() == [True, False, True]
    assert "at or behind the camera (depth -1.5 m, needs > 0)" in result.errors[2]
    assert "depth 0 m" in result.errors[0]
    assert result.params["transl"][2, 2].item() == -1.5


def test_a_focal_length_not_above_zero_is_flagged(dataset: Path) -> None:
    init = init_arrays(dataset)
    init["focal_length"][1] = [-500.0, -500.0]
    result = fit_with(dataset, init)
    assert result.flags["bad_input"].tolist() == [False, True, False]
    assert result.errors[1] == "init focal_length [-500, -500] must be > 0"
    assert result.params["focal_length"][1].tolist() == [-500.0, -500.0]


def test_a_given_camera_must_match_the_images_and_be_finite(dataset: Path) -> None:
    init = init_arrays(dataset)
    camera = Camera(torch.tensor(init["focal_length"]), torch.tensor(init["camera_center"]),
                    torch.tensor([[128.0, 128.0], [256.0, 256.0], [128.0, 128.0]]))
    camera.focal_length[2, 0] = torch.nan
    result = fit_with(dataset, init, camera=camera)
    assert result.flags["bad_input"].tolist() == [False, True, True]
    assert result.errors[1] == ("image size [128, 128] differs from the camera's image_size "
                                "[256, 256]")
    assert result.errors[2].startswith("camera focal_length is not finite: [nan, ")


def test_a_batch_of_only_bad_samples_is_not_fitted(dataset: Path) -> None:
    init = init_arrays(dataset)
    init["betas"][:] = np.inf
    result = fit_with(dataset, init)
    assert result.flags["bad_input"].all() and not result.ok.any()
    assert all(message.startswith("init betas is not finite") for message in result.errors)
    assert result.energy.isnan().all() and result.stages == [] and result.terms == {}
    assert result.vertices.shape == (NUM, 7000, 3)


def test_fit_result_keeps_its_positional_fields_and_fills_the_new_ones() -> None:
    ones = torch.ones(2)
    result = FitResult({}, torch.zeros(2, 1, 3), torch.zeros(2, 24, 3), ones, {}, [],
                       {"nan": ones > 2}, {"total": 0.0})
    assert FLAG_NAMES[:4] == ("nan", "diverged", "no_data", "bad_input")
    assert list(result.flags) == list(FLAG_NAMES)
    assert result.errors == ["", ""] and result.ok.all()
    with pytest.raises(ValueError, match="1 errors for 2 samples"):
        FitResult({}, torch.zeros(2, 1, 3), torch.zeros(2, 24, 3), ones, {}, [], {}, {}, ["x"])


def test_init_names_holding_only_some_images_are_refused(dataset: Path) -> None:
    with pytest.raises(FitInputError, match="init.npz: image_names holds 2 of the 3 .*'other'"):
        read_init(dataset / "init.npz", names=["000000", "other", "000002"])
    with pytest.raises(FitInputError, match="init: transl must hold numbers"):
        read_init({"transl": np.array([["a", "b", "c"]])})


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": float("nan")}, "stage 'camera': lr must be a finite number > 0, got nan"),
        ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
        ({"pose_prior_weight": [0.0, -4.78]},
         "stage 'body': pose_prior_weight must be a finite number >= 0.*weights enter squared"),
        ({"data_weight": float("nan")}, "data_weight must be a finite number >= 0, got nan"),
        ({"iterations": float("nan")}, "iterations must be a whole number >= 0, got nan"),
        ({"term_weights": {"keypoint": 2.0}},
         "term_weights: unknown data term.*'keypoint'.*registered data terms: densepose, flow, "
         "keypoints, keypoints3d"),
        ({"term_weights": {"keypoints": -1.0}},
         r"term_weights\['keypoints'\] must be a finite number >= 0"),
        ({"term_options": {"sift": {}}}, "term_options: unknown data term.*'sift'"),
        ({"term_options": {"keypoints": {"rhoo": 1.0}}},
         r"term_options\['keypoints'\]: unknown option.*'rhoo'.*rho, crop_size"),
        ({"divergence_factor": 0.0}, "divergence_factor must be a number > 0, got 0"),
        ({"divergence_factor": float("nan")}, "divergence_factor must be a number > 0"),
        ({"focal_length": -1.0}, "focal_length must be a finite number > 0, got -1"),
        ({"term_weights": [1.0]}, "term_weights must be a dict"),
    ],
)
def test_settings_out_of_range_name_the_setting(settings: dict, message: str) -> None:
    with pytest.raises(FitInputError, match=message):
        fit_config("refine", **settings)


def test_stage_and_fit_configs_refuse_bad_values_themselves() -> None:
    with pytest.raises(ValueError, match="stage 's': lr must be a finite number > 0, got nan"):
        StageConfig("s", ("betas",), lr=float("nan"))
    with pytest.raises(ValueError, match="stage 's': bending_weight must be .* >= 0"):
        StageConfig("s", ("betas",), bending_weight=-15.2)
    with pytest.raises(ValueError, match="term_weights: unknown data term"):
        preset("spin", term_weights={"silhouette": 1.0})
    assert fit_config("refine", divergence_factor=float("inf")).divergence_factor == float("inf")
    with pytest.raises(FitInputError, match="lr must be a finite number"):
        Fitter(lr=float("nan"))


# --------------------------------------------------------------------------- metrics


def dataset_with(root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    return copy


def test_non_finite_rows_leave_the_means_and_are_counted(dataset: Path, tmp_path: Path) -> None:
    data = dataset_with(dataset, tmp_path)
    gt = read_params(data / "gt.npz")
    gt["betas"][2] = np.nan
    np.savez(data / "gt.npz", **gt)
    opened = open_dataset(data)
    body = fitkit.load_body("open")
    results = {**{k: v.copy() for k, v in opened.init.items()},
               "flag_nan": np.zeros(NUM, bool), "flag_no_data": np.zeros(NUM, bool)}
    results["transl"][1] = np.inf
    metrics = report.compute_metrics(body, opened, results)
    assert metrics["num_valid"] == 1 and metrics["excluded_non_finite"] == 2
    assert all(np.isfinite(value) for label in ("init", "refined")
               for value in metrics[label].values())
    alone = report.compute_metrics(
        body, open_dataset(dataset, limit=1), {k: v[:1] for k, v in results.items()})
    assert metrics["refined"] == alone["refined"]  # the mean of row 0, untouched by rows 1, 2
    results["flag_nan"][0] = True
    metrics = report.compute_metrics(body, opened, results)
    assert metrics["num_valid"] == 0 and metrics["refined"] == dict.fromkeys(report.METRICS)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics, allow_nan=False))
    assert strict_json(path)["init"]["mpjpe"] is None


def test_refine_with_a_nan_gt_row_and_an_inf_init_writes_strict_metrics(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = dataset_with(dataset, tmp_path)
    gt, init = read_params(data / "gt.npz"), read_params(data / "init.npz")
    gt["body_pose"][2] = np.nan
    init["transl"][1] = np.inf
    np.savez(data / "gt.npz", **gt)
    np.savez(data / "init.npz", **init)
    monkeypatch.setattr(report, "OVERLAY_MAX_SIDE", 64)
    out = tmp_path / "out"
    assert main(["--input", str(data), "--output", str(out), "--overlays", "1",
                 "--iterations", "2", "--quiet"]) == 0
    metrics = strict_json(out / "metrics.json")
    results = read_params(out / "results.npz")
    flagged = np.any([results[k] for k in results
                      if k.startswith("flag_") and k[5:] not in PLAUSIBILITY_FLAGS], axis=0)
    assert metrics["num_valid"] == 1
    assert metrics["num_valid"] + metrics["excluded_non_finite"] + flagged.sum() == NUM
    assert all(value > 0 for label in ("init", "refined") for value in metrics[label].values())
    overlay = Image.open(out / "overlays" / "000000.png")
    # a 128-pixel image drawn at most 64 pixels high: two rows (refined, init) of panels
    assert overlay.height == 2 * 64 + PAD


def test_a_downscaled_overlay_scales_its_camera_with_the_image() -> None:
    camera = Camera(torch.tensor([[1000.0, 1000.0]]), torch.tensor([[1999.5, 999.5]]),
                    torch.tensor([[4000.0, 2000.0]]))
    image = np.zeros((2000, 4000, 3), np.uint8)
    image[:, :2000] = 255
    small, scaled = report.downscaled(image, camera, max_side=400)
    assert small.shape == (200, 400, 3) and small[:, :199].min() == 255
    assert scaled.focal_length.tolist() == [[100.0, 100.0]]
    assert scaled.principal_point.tolist() == [[199.5, 99.5]]  # still the image centre
    point = torch.tensor([[[0.3, -0.2, 5.0]]])
    torch.testing.assert_close((camera.project(point) + 0.5) / 10, scaled.project(point) + 0.5)
    assert report.downscaled(small, scaled, max_side=400)[0] is small


# --------------------------------------------------------------------------- eval


def test_degenerate_ground_truth_gives_nan_not_a_perfect_zero() -> None:
    gt = torch.zeros(2, 24, 3)  # e.g. the joints of an all-zero joint regressor
    gt[1] = torch.randn(24, 3)
    pred = torch.randn(2, 24, 3)
    metrics = body_metrics(gt.clone(), gt, gt.clone(), gt)
    for name, value in metrics.items():
        assert value[0].isnan(), name  # was 0 for every metric
        assert value[1].abs() < 1e-2, name
    assert body_metrics(pred, gt)["pa_mpjpe"][0].isnan()
    one = torch.tensor([[True] + [False] * 23, [True] * 24])
    single = mpjpe(pred, gt[[1, 1]], mask=one)  # one joint in the mask: nothing to measure
    assert single[0].isnan() and single[1] > 0


def test_metric_inputs_of_different_shapes_or_bad_masks_are_refused() -> None:
    pred = torch.randn(2, 24, 3)
    with pytest.raises(ValueError, match=r"shape \(B, N, 3\), got \(2, 24, 3\) and \(2, 1, 3\)"):
        mpjpe(pred, pred[:, :1])  # would broadcast
    with pytest.raises(ValueError, match="mask weights must be finite and >= 0"):
        mpjpe(pred, pred, mask=-torch.ones(2, 24))
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 24\)"):
        mpjpe(pred, pred, mask=torch.ones(24, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \(B, N, 2\)"):
        end_point_error(torch.zeros(1, 2, 8, 8), torch.zeros(1, 8, 8, 2))
