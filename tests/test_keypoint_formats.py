"""Keypoint formats of other detectors: tables, body sets, the keypoints term, JSON files, fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fitting import DTYPE, scene, stick_body

import fitkit
from fitkit.api import FitInputError
from fitkit.body import OPENPOSE_VERTEX_NAMES, SMPL_JOINT_NAMES, SMPL_TO_OPENPOSE25
from fitkit.eval import mpjpe
from fitkit.fitting.settings import fit_config
from fitkit.geometry import Camera
from fitkit.io import read_params
from fitkit.io.inputs import read_keypoints
from fitkit.io.keypoint_formats import (
    KEYPOINT_FORMATS,
    format_code,
    read_keypoint_file,
)
from fitkit.io.openpose import KeypointFileError, write_openpose
from fitkit.refine import main as refine_main
from fitkit.synth import SynthConfig, generate_dataset
from fitkit.terms import KeypointsTerm, TermContext
from fitkit.terms.keypoints import default_joint_weights, options_with_format

FORMATS = list(KEYPOINT_FORMATS)
FACE_WORDS = ("nose", "eye", "ear", "Nose", "Eye", "Ear")


@pytest.fixture(scope="module")
def body():
    return stick_body()


def camera(batch: int = 2) -> Camera:
    return Camera.from_image_size(1000, 800, batch_size=batch, dtype=DTYPE)


def side(name: str) -> str | None:
    """The body side a point or source name says (``None``: the middle)."""
    if name.startswith(("left", "L")) or name in ("leye", "lear"):
        return "left"
    if name.startswith(("right", "R")) or name in ("reye", "rear"):
        return "right"
    return None


def source_point(body, output, source: str) -> torch.Tensor:
    """``(B, 3)`` the body point a source names, looked up without the keypoint sets."""
    if source in SMPL_JOINT_NAMES:
        return output.joints[:, SMPL_JOINT_NAMES.index(source)]
    return output.vertices[:, int(body.openpose_vertex_ids[OPENPOSE_VERTEX_NAMES.index(source)])]


def detections(body, params, cam: Camera, name: str, seed: int = 0) -> torch.Tensor:
    """``(B, K, 3)`` exact keypoints of format ``name`` (confidence 1); points the body cannot
    place get arbitrary pixels with confidence 0.8, as a detector would report them."""
    fmt = KEYPOINT_FORMATS[name]
    with torch.no_grad():
        pixels = cam.project(body(**params).keypoints(fmt.keypoint_set))
    junk = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    unplaced = torch.tensor([source is None for source in fmt.sources])
    pixels = torch.where(unplaced[:, None], 800 * junk, pixels)
    confidence = torch.where(unplaced, 0.8, 1.0).to(DTYPE).expand(pixels.shape[:2])
    return torch.cat([pixels, confidence[..., None]], dim=-1)


def test_format_tables_name_body_points_on_the_right_side():
    for fmt in KEYPOINT_FORMATS.values():
        assert len(fmt.names) == len(fmt.sources) == len(fmt.weights) == len(fmt.face)
        for name, source, weight, face in zip(fmt.names, fmt.sources, fmt.weights, fmt.face,
                                              strict=True):
            assert face == any(word in name for word in FACE_WORDS), (fmt.name, name)
            if source is None:
                assert weight == 0, (fmt.name, name)
                continue
            assert source in SMPL_JOINT_NAMES or source in OPENPOSE_VERTEX_NAMES
            assert side(name) == side(source), (fmt.name, name, source)
            assert 0 <= weight <= 1
    counts = {name: fmt.count for name, fmt in KEYPOINT_FORMATS.items()}
    assert counts == {"body25": 25, "coco17": 17, "coco_wholebody": 133, "halpe26": 26,
                      "h36m17": 17, "mediapipe33": 33}
    # BODY_25 keeps SMPLify-X's mapping and SPIN's weights (Neck and hips off)
    assert SMPL_TO_OPENPOSE25 == (24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7,
                                  *range(25, 35))
    body25 = KEYPOINT_FORMATS["body25"]
    off = [name for name, weight in zip(body25.names, default_joint_weights(), strict=True)
           if weight == 0]
    assert off == ["Neck", "RHip", "LHip"]
    # the detector's hips sit elsewhere than SMPL's: lower weight where nothing replaces them
    coco = KEYPOINT_FORMATS["coco17"]
    assert 0 < coco.weights[coco.index("left_hip")] < coco.weights[coco.index("left_knee")]
    # fingers and the face contour of COCO-WholeBody are not placed
    wholebody = KEYPOINT_FORMATS["coco_wholebody"]
    assert sum(source is not None for source in wholebody.sources) == 17 + 6


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_round_trips_onto_its_body_points(body, name: str):
    fmt = KEYPOINT_FORMATS[name]
    truth, cam = scene(2), camera()
    keypoints = detections(body, truth, cam, name)
    term = KeypointsTerm(keypoints, crop_size=224.0, format=name)
    output = body(**truth)
    assert term.energy(output, cam).abs().max() < 1e-8
    shifted = {**truth, "transl": truth["transl"] + torch.tensor([0.05, 0.0, 0.0], dtype=DTYPE)}
    assert (term.energy(body(**shifted), cam) > 1.0).all()
    # the term's points are the intended joints and vertices, in the format's order
    placed = [i for i, source in enumerate(fmt.sources) if source is not None]
    expected = torch.stack([source_point(body, output, fmt.sources[i]) for i in placed], dim=1)
    torch.testing.assert_close(term.points(output), expected)
    assert term.targets.shape == (2, len(placed), 2)
    assert term.face.tolist() == [fmt.face[i] for i in placed]
    # the body's set in the format's order: NaN where it has no such point
    full = output.keypoints(fmt.keypoint_set)
    assert full.shape == (2, fmt.count, 3)
    assert torch.isnan(full[0, :, 0]).tolist() == [source is None for source in fmt.sources]
    assert body.keypoint_names(fmt.keypoint_set) == fmt.names
    # sparse evaluation reads exactly the vertices the format uses
    vertices = term.body_vertices(body)
    used = {source for source in fmt.sources if source in OPENPOSE_VERTEX_NAMES}
    assert sorted(vertices.tolist()) == sorted(
        int(body.openpose_vertex_ids[OPENPOSE_VERTEX_NAMES.index(s)]) for s in used)
    sparse = body(**shifted, vertex_ids=vertices)
    torch.testing.assert_close(term.energy(sparse, cam), term.energy(body(**shifted), cam))
    # the count alone picks the format, except 17 points, which are COCO-17 by default
    assert KeypointsTerm(keypoints).format.name == ("coco17" if name == "h36m17" else name)


def test_torso_view_and_translation_estimate_use_each_formats_shoulders_and_hips(body):
    truth, cam = scene(2), camera()
    for name in FORMATS:
        term = KeypointsTerm(detections(body, truth, cam, name), format=name)
        fmt = KEYPOINT_FORMATS[name]
        torso = term.torso()
        assert torso.rho is None and torso.format is fmt
        assert torso.weights.gt(0).sum(dim=1).tolist() == [4, 4]
        names = [fmt.names[i] for i in fmt.placed]
        assert sorted(names[i] for i in torch.nonzero(torso.weights[0]).flatten()) == sorted(
            fmt.torso)
        at_origin = body(**{**truth, "transl": torch.zeros(2, 3, dtype=DTYPE)})
        estimate = term.estimate_transl(at_origin, cam)
        assert (estimate - truth["transl"]).norm(dim=-1).max() < 0.3, name


def test_a_count_that_fits_no_format_names_the_candidates():
    with pytest.raises(ValueError, match=r"\(B, 25, 3\).*coco17 \(17\).*coco_wholebody \(133\)"):
        KeypointsTerm(torch.zeros(2, 18, 3))
    with pytest.raises(ValueError, match=r"'coco17' has 17 points.*could be body25 \(25\)"):
        KeypointsTerm(torch.zeros(2, 25, 3), format="coco17")
    with pytest.raises(ValueError, match=r"unknown keypoint format 'coco18'.*h36m17 \(17\)"):
        KeypointsTerm(torch.zeros(2, 17, 3), format="coco18")
    assert KeypointsTerm(torch.zeros(2, 17, 3), format="h36m17").format.name == "h36m17"
    with pytest.raises(FitInputError, match=r"\(B, 25, 3\).*coco17 \(17\).*got .* \(18, 3\)"):
        read_keypoints(np.zeros((18, 3)))
    with pytest.raises(ValueError, match=r"joint_weights must have shape \(17,\)"):
        KeypointsTerm(torch.zeros(1, 17, 3), joint_weights=torch.ones(25))


def instances(people: np.ndarray) -> list[dict]:
    """mmpose's per-instance dicts (``split_instances``) of ``(P, K, 3)`` people."""
    return [{"keypoints": person[:, :2].tolist(), "keypoint_scores": person[:, 2].tolist(),
             "bbox": [[0.0, 0.0, 10.0, 10.0]], "bbox_score": 0.9} for person in people]


def people(count: int, sizes: tuple[float, ...], seed: int = 0) -> np.ndarray:
    """``(P, K, 3)`` people of the given sizes (pixels), confidences in [0.5, 1]."""
    rng = np.random.default_rng(seed)
    result = []
    for size in sizes:
        uv = 100 + size * rng.random((count, 2))
        result.append(np.concatenate([uv, 0.5 + 0.5 * rng.random((count, 1))], axis=1))
    return np.array(result, dtype=np.float32)


def test_mmpose_and_coco_results_files_are_recognized_by_their_structure(tmp_path: Path):
    small_and_large = people(17, (50.0, 300.0))
    inferencer = tmp_path / "a_keypoints.json"
    inferencer.write_text(json.dumps(instances(small_and_large)))
    h36m = people(17, (200.0,), seed=1)
    demo = tmp_path / "b_keypoints.json"
    demo.write_text(json.dumps({
        "meta_info": {"dataset_name": "h36m", "num_keypoints": 17,
                      "keypoint_id2name": {str(i): n for i, n in enumerate(
                          KEYPOINT_FORMATS["h36m17"].names)}},
        "instance_info": [{"frame_id": 0, "instances": instances(h36m)}]}))
    wholebody = people(133, (250.0,), seed=2)
    wholebody[0, 5, 0] = np.nan
    predictions = tmp_path / "c_keypoints.json"
    predictions.write_text(json.dumps({"predictions": [instances(wholebody)]}))
    coco = people(17, (120.0,), seed=3)
    coco[0, :, 2] = np.arange(17) % 3  # COCO's visibility flags 0, 1, 2
    results = tmp_path / "d_keypoints.json"
    results.write_text(json.dumps([{"image_id": 5, "category_id": 1, "score": 0.9,
                                    "keypoints": coco[0].ravel().tolist()}]))
    nobody = tmp_path / "e_keypoints.json"
    nobody.write_text("[]")

    read = read_keypoint_file(inferencer)
    np.testing.assert_allclose(read.people, small_and_large, rtol=1e-6)
    assert read.format is None and read.layout == "mmpose"
    assert read_keypoint_file(demo).format == "h36m17"
    got = read_keypoint_file(predictions).people[0]
    np.testing.assert_array_equal(got[5], [0, 0, 0])  # non-finite: missing
    np.testing.assert_allclose(got[6:], wholebody[0, 6:], rtol=1e-6)
    flags = read_keypoint_file(results).people[0, :, 2]
    assert flags.tolist() == [min(v % 3, 1) for v in range(17)]
    assert read_keypoint_file(nobody).people.shape == (0, 0, 3)

    batch = read_keypoints([inferencer, results, nobody])
    np.testing.assert_allclose(batch["keypoints"][0], small_and_large[1], rtol=1e-6)  # largest
    assert not batch["keypoints"][2].any() and batch["keypoint_format"].tolist() == [0, 0, 0]
    context = TermContext(body=None, camera=None)
    term = KeypointsTerm.from_observations(
        {key: torch.as_tensor(value) for key, value in batch.items()}, context)
    assert term.format.name == "coco17" and term.valid.tolist() == [True, True, False]
    # the dataset an mmpose file names decides between the two 17-point formats
    named = read_keypoints([demo, inferencer])
    assert named["keypoint_format"].tolist() == [format_code("h36m17"), 0]
    term = KeypointsTerm.from_observations(
        {key: torch.as_tensor(value) for key, value in named.items()}, context)
    assert term.format.name == "h36m17"
    with pytest.raises(FitInputError, match="files name format 'h36m17'.*asked for is 'coco17'"):
        KeypointsTerm.from_observations({key: torch.as_tensor(value)
                                         for key, value in named.items()},
                                        TermContext(None, None, options={"format": "coco17"}))
    # OpenPose files name BODY_25; a batch does not mix formats
    openpose = tmp_path / "f_keypoints.json"
    write_openpose(openpose, people(25, (80.0,))[0])
    assert read_keypoints([openpose])["keypoint_format"].tolist() == [format_code("body25")]
    with pytest.raises(FitInputError, match="f_keypoints.json.*25.*a_keypoints.json.*17"):
        read_keypoints([inferencer, openpose])


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ([{"keypoints": [[1.0, 2.0]] * 18, "keypoint_scores": [1.0] * 18}], "(top level)",
         "18 keypoints per person fit no format"),
        ({"meta_info": {"dataset_name": "mpii"}, "instance_info": []},
         "meta_info.dataset_name", "'mpii' is not a keypoint format"),
        ([{"image_id": 1, "keypoints": [1.0] * 51}, {"image_id": 2, "keypoints": [1.0] * 51}],
         "image_id", "2 images"),
        ([{"keypoints": [[1.0, 2.0, 3.0]] * 17, "keypoint_scores": [1.0] * 17}],
         "[0].keypoints", "2D keypoints"),
        ([{"keypoints": [[1.0, 2.0]] * 17, "keypoint_scores": [1.0] * 16}],
         "[0].keypoint_scores", "16 scores for 17"),
        ([{"frame_id": 0, "instances": []}, {"frame_id": 1, "instances": []}], "(top level)",
         "2 video frames"),
    ],
)
def test_bad_keypoint_files_name_the_file_and_the_field(tmp_path: Path, content, field, message):
    path = tmp_path / "bad_keypoints.json"
    path.write_text(json.dumps(content))
    with pytest.raises(KeypointFileError, match=message) as error:
        read_keypoint_file(path)
    assert error.value.field == field and "bad_keypoints.json" in str(error.value)
    good = tmp_path / "good_keypoints.json"
    good.write_text(json.dumps(instances(people(17, (100.0,)))))
    errors = ["", ""]
    batch = read_keypoints([path, good], errors)
    assert "bad_keypoints.json" in errors[0] and not errors[1]
    assert not batch["keypoints"][0].any() and batch["keypoints"][1].any()


def test_unknown_layouts_are_refused_with_the_layouts_fitkit_reads(tmp_path: Path):
    path = tmp_path / "x_keypoints.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(KeypointFileError, match="x_keypoints.json.*OpenPose.*mmpose.*COCO"):
        read_keypoint_file(path)


def test_keypoint_format_option_is_merged_over_the_presets_keypoints_options():
    options = options_with_format("coco17", {"keypoints": {"rho": 50.0}, "flow": {"rho": 1.0}})
    assert options == {"keypoints": {"rho": 50.0, "format": "coco17"}, "flow": {"rho": 1.0}}
    config = fit_config("refine", term_options=options)
    assert config.term_options["keypoints"] == {"rho": 50.0, "crop_size": 224.0,
                                                "format": "coco17"}
    plain = fit_config("refine", term_options={"keypoints": {"format": "h36m17"}})
    assert plain.term_options["keypoints"] == {"rho": 100.0, "crop_size": 224.0,
                                               "format": "h36m17"}
    with pytest.raises(ValueError, match="unknown keypoint format"):
        options_with_format("coco18")
    with pytest.raises(FitInputError, match="no keypoints term"):
        fitkit.fit(None, data_term="densepose", iuv=np.zeros((1, 8, 8, 3), np.uint8),
                   camera=Camera.from_image_size(8, 8), keypoint_format="coco17")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 128 x 128 synthetic images; their keypoints replaced by COCO-17 of the true bodies,
    in mmpose's demo layout."""
    root = tmp_path_factory.mktemp("formats") / "data"
    generate_dataset(root, 4, seed=0, config=SynthConfig(size=128, keypoint_noise="none"),
                     progress=False)
    pixels = coco17_of_truth(root)
    for name, person in zip(read_params(root / "gt.npz")["image_names"], pixels, strict=True):
        (root / "keypoints" / f"{name}_keypoints.json").write_text(json.dumps(
            {"meta_info": {"dataset_name": "coco", "num_keypoints": 17},
             "instance_info": instances(person[None])}))
    return root


def coco17_of_truth(root: Path) -> np.ndarray:
    """``(B, 17, 3)`` exact COCO-17 keypoints of a dataset's true bodies."""
    gt = read_params(root / "gt.npz")
    body = fitkit.load_body("open")
    cam = Camera(torch.as_tensor(gt["focal_length"]), torch.as_tensor(gt["camera_center"]),
                 torch.full((len(gt["betas"]), 2), 128.0))
    with torch.no_grad():
        output = body(**{k: torch.as_tensor(gt[k]) for k in ("global_orient", "body_pose",
                                                             "betas", "transl")})
        pixels = cam.project(output.keypoints("coco17"))
    return torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1).numpy()


def true_joints(root: Path, key: str = "gt") -> torch.Tensor:
    params = read_params(root / f"{key}.npz")
    with torch.no_grad():
        return fitkit.load_body("open")(**{k: torch.as_tensor(params[k]) for k in (
            "global_orient", "body_pose", "betas", "transl")}).joints


def test_a_fit_to_coco17_keypoints_of_a_known_body_lands_near_it(dataset: Path):
    images = [dataset / "images" / f"{i:06d}.png" for i in range(4)]
    result = fitkit.fit(images, init=dataset / "init.npz", keypoints=coco17_of_truth(dataset),
                        keypoint_format="coco17", iterations=20)
    before = mpjpe(true_joints(dataset, "init"), true_joints(dataset))
    after = mpjpe(result.joints, true_joints(dataset))
    assert after.mean() < 0.5 * before.mean(), (before, after)  # measured: 86 -> 33 mm
    assert result.ok.all()


def test_refine_reads_mmpose_files_of_a_dataset_folder(dataset: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ["--input", str(dataset), "--iterations", "5", "--overlays", "0", "--quiet"]
    assert refine_main([*args, "--output", str(out), "--keypoint-format", "coco17"]) == 0
    results, init = read_params(out / "results.npz"), read_params(dataset / "init.npz")
    assert not results["flag_bad_input"].any() and not results["flag_no_data"].any()
    assert not np.allclose(results["body_pose"], init["body_pose"])
    metrics = json.loads((out / "metrics.json").read_text())
    # recorded as given; fit_config merges it over the preset's keypoint options
    assert metrics["overrides"]["term_options"]["keypoints"] == {"format": "coco17"}
    assert refine_main([*args, "--output", str(tmp_path / "h36m"),
                        "--keypoint-format", "h36m17"]) == 2
