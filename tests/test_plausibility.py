"""Plausibility flags: each fires on a fit that is wrong in its way and stays off on good fits."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fitkit.body import OPENPOSE25_NAMES, BodyModel, BodyOutput, load_body
from fitkit.fitting import FLAG_NAMES, SMPLify, preset
from fitkit.fitting.plausibility import (
    DEPTH_RATIO,
    HYPEREXTENSION_DEGREES,
    PLAUSIBILITY_FLAGS,
    REPROJECTION_ERROR,
    measure_plausibility,
    plausibility_flags,
)
from fitkit.geometry import Camera
from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from fitkit.priors.bending import BENDING_INDICES, BENDING_SIGNS
from fitkit.refine.inputs import part_arrays
from fitkit.terms import KeypointsTerm

SIZE = 256
FACE = torch.tensor([name in ("Nose", "REye", "LEye", "REar", "LEar")
                     for name in OPENPOSE25_NAMES])
"""BODY_25's face points, set on the terms here (``KeypointsTerm`` may not set them yet)."""


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body("open")


def people(body: BodyModel, yaw: list[float]) -> dict[str, torch.Tensor]:
    """Upright bodies turned by ``yaw`` (radians, 0 faces the camera) about the vertical axis,
    knees and elbows a little flexed, their bounding box centred 3 m in front of the camera."""
    count = len(yaw)
    turn = axis_angle_to_matrix(torch.tensor([[0.0, angle, 0.0] for angle in yaw]))
    upright = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0]))
    body_pose = torch.zeros(count, 69)
    for index, sign in zip(BENDING_INDICES, BENDING_SIGNS, strict=True):
        body_pose[:, index] = -0.35 * sign  # 20 degrees of flexion
    params = {"global_orient": matrix_to_axis_angle(turn @ upright), "body_pose": body_pose,
              "betas": torch.zeros(count, 10), "transl": torch.zeros(count, 3)}
    with torch.no_grad():
        vertices = body(**params).vertices
    center = (vertices.amin(dim=1) + vertices.amax(dim=1)) / 2
    params["transl"] = torch.tensor([0.0, 0.0, 3.0]) - center
    return params


def evaluate(body: BodyModel, params: dict[str, torch.Tensor]) -> BodyOutput:
    with torch.no_grad():
        return body(**params)


def exact_keypoints(output: BodyOutput, camera: Camera) -> torch.Tensor:
    """``(B, 25, 3)`` the bodies' BODY_25 keypoints projected, confidence 1."""
    pixels = camera.project(output.keypoints("openpose25"))
    return torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)


def keypoints_term(keypoints: torch.Tensor) -> KeypointsTerm:
    term = KeypointsTerm(keypoints)
    term.face = FACE
    return term


def moved(output: BodyOutput, transform) -> BodyOutput:
    """The same bodies with ``transform`` applied to their vertices and joints (B, N, 3)."""
    return dataclasses.replace(output, vertices=transform(output.vertices),
                               joints=transform(output.joints))


def flags_of(body_pose, output, keypoints, camera) -> dict[str, list[bool]]:
    measures = measure_plausibility(body_pose, output, {"keypoints": keypoints_term(keypoints)},
                                    camera)
    return {name: value.tolist() for name, value in plausibility_flags(measures).items()}


def test_the_flags_are_result_flags_and_reach_the_part_files(body):
    params = people(body, [0.0, 0.3])
    camera = Camera.from_image_size(SIZE, SIZE, 2)
    term = keypoints_term(exact_keypoints(evaluate(body, params), camera))
    result = SMPLify(body, None, preset("refine").with_stages(iterations=0)).fit(
        term, camera, init=params)
    assert FLAG_NAMES[-len(PLAUSIBILITY_FLAGS):] == PLAUSIBILITY_FLAGS
    assert set(PLAUSIBILITY_FLAGS) <= set(result.flags)
    arrays = part_arrays(["a", "b"], result, ["", ""])
    for name in PLAUSIBILITY_FLAGS:
        assert arrays[f"flag_{name}"].dtype == np.bool_ and arrays[f"flag_{name}"].shape == (2,)


def test_a_fit_of_exact_keypoints_raises_no_flag(body):
    """SMPLify started near the truth (every pose component off by N(0, 0.1) rad) on exact
    keypoints: the start is off by more than the reprojection threshold somewhere, the fit is
    good and carries no flag."""
    params = people(body, [0.0, 0.4, -0.6, math.pi / 2])
    camera = Camera.from_image_size(SIZE, SIZE, 4)
    term = keypoints_term(exact_keypoints(evaluate(body, params), camera))
    generator = torch.Generator().manual_seed(0)
    init = dict(params, body_pose=params["body_pose"]
                + 0.1 * torch.randn(params["body_pose"].shape, generator=generator))
    start, result = (SMPLify(body, None, preset("refine").with_stages(iterations=count)).fit(
        term, camera, init=init) for count in (0, 10))
    assert start.flags["reprojection"].any()
    assert result.ok.all(), {name: value.tolist() for name, value in result.flags.items()}


@pytest.mark.parametrize("joint", range(4), ids=["left elbow", "right elbow", "left knee",
                                                  "right knee"])
def test_an_elbow_or_knee_bent_backwards_is_hyperextended_and_flexed_is_not(body, joint):
    camera = Camera.from_image_size(SIZE, SIZE, 3)
    params = people(body, [0.0, 0.0, 0.0])
    index, sign = BENDING_INDICES[joint], BENDING_SIGNS[joint]
    degrees = [HYPEREXTENSION_DEGREES + 10, HYPEREXTENSION_DEGREES - 10, -90.0]
    params["body_pose"][:, index] = sign * torch.deg2rad(torch.tensor(degrees))
    output = evaluate(body, params)
    flags = flags_of(params["body_pose"], output, exact_keypoints(output, camera), camera)
    assert flags["hyperextended"] == [True, False, False]
    assert not any(flags["reprojection"] + flags["depth"] + flags["facing"])


def test_a_fit_through_smplify_raises_hyperextended(body):
    params = people(body, [0.0, 0.0])
    params["body_pose"][0, BENDING_INDICES[2]] = BENDING_SIGNS[2] * 0.8  # knee 46 deg backwards
    camera = Camera.from_image_size(SIZE, SIZE, 2)
    term = keypoints_term(exact_keypoints(evaluate(body, params), camera))
    result = SMPLify(body, None, preset("refine").with_stages(iterations=0)).fit(
        term, camera, init=params)
    assert result.flags["hyperextended"].tolist() == [True, False]
    assert result.ok.tolist() == [False, True]


def test_a_body_turned_away_while_its_face_is_detected_is_flagged(body):
    camera = Camera.from_image_size(SIZE, SIZE, 2)
    params = people(body, [0.0, 0.0])
    output = evaluate(body, params)
    keypoints = exact_keypoints(output, camera)
    turn = axis_angle_to_matrix(torch.tensor([0.0, math.pi, 0.0]))
    center = torch.tensor([0.0, 0.0, 3.0])
    turned = moved(output, lambda points: torch.cat(
        [points[:1], (points[1:] - center) @ turn.T + center]))  # the second one turned 180 deg
    assert flags_of(params["body_pose"], turned, keypoints, camera)["facing"] == [False, True]


def test_facing_follows_which_face_points_are_detected(body):
    """Bodies facing the camera, turned away and seen from the side, each with its face
    detected (confidence 0.9), missing, or detected with low confidence (0.3)."""
    camera = Camera.from_image_size(SIZE, SIZE, 3)
    output = evaluate(body, people(body, [0.0, math.pi, math.pi / 2]))
    pose = torch.zeros(3, 69)
    expected = {0.9: [False, True, False], 0.0: [True, False, False], 0.3: [True, False, False]}
    for confidence, flags in expected.items():
        keypoints = exact_keypoints(output, camera)
        keypoints[:, FACE, 2] = confidence
        assert flags_of(pose, output, keypoints, camera)["facing"] == flags, confidence
    # no face points known: no flag
    term = KeypointsTerm(exact_keypoints(output, camera))
    term.face = None
    measures = measure_plausibility(pose, output, {"keypoints": term}, camera)
    assert measures["face"].isnan().all() and not plausibility_flags(measures)["facing"].any()


def test_facing_is_measured_in_the_camera_frame_of_cameras_with_extrinsics(body):
    """World-frame bodies seen by cameras with R, t measure as their camera-frame twins."""
    camera = Camera.from_image_size(SIZE, SIZE, 2)
    output = evaluate(body, people(body, [0.0, math.pi]))
    rotation = axis_angle_to_matrix(torch.tensor([[0.0, math.pi, 0.0], [0.3, 0.5, 0.0]]))
    shift = torch.tensor([[0.5, 0.0, 6.0], [-1.0, 0.2, 4.0]])
    world = moved(output, lambda points: (points - shift[:, None]) @ rotation)
    posed = Camera(camera.focal_length, camera.principal_point, camera.image_size,
                   rotation, shift)
    keypoints = exact_keypoints(output, camera)
    terms = {"keypoints": keypoints_term(keypoints)}
    in_camera = measure_plausibility(torch.zeros(2, 69), output, terms, camera)
    in_world = measure_plausibility(torch.zeros(2, 69), world, terms, posed)
    torch.testing.assert_close(in_world["facing"], in_camera["facing"])
    torch.testing.assert_close(in_world["face"], in_camera["face"])
    assert in_camera["facing"][0] > 0.9 and in_camera["facing"][1] < -0.9


def test_a_body_at_twice_its_depth_is_flagged_and_one_a_little_off_is_not(body):
    camera = Camera.from_image_size(SIZE, SIZE, 3)
    params = people(body, [0.0, 0.0, 0.0])
    output = evaluate(body, params)
    keypoints = exact_keypoints(output, camera)
    factor = torch.tensor([2.0, 1.1, 1.0])[:, None, None]
    center = torch.tensor([0.0, 0.0, 3.0])
    further = moved(output, lambda points: points + (factor - 1) * center)  # along the ray
    measures = measure_plausibility(params["body_pose"], further,
                                    {"keypoints": keypoints_term(keypoints)}, camera)
    ratio = measures["size_ratio"]
    assert ratio[0] == pytest.approx(0.5, abs=0.03) and ratio[1] == pytest.approx(1 / 1.1, abs=0.02)
    assert 1 / DEPTH_RATIO < ratio[1] < DEPTH_RATIO
    assert plausibility_flags(measures)["depth"].tolist() == [True, False, False]


def test_displaced_keypoints_are_a_reprojection_error_relative_to_the_height(body):
    camera = Camera.from_image_size(SIZE, SIZE, 3)
    params = people(body, [0.0, 0.0, 0.0])
    output = evaluate(body, params)
    keypoints = exact_keypoints(output, camera)
    used = keypoints[0, :, :2]
    height = (used.amax(dim=0) - used.amin(dim=0)).max()
    shift = torch.tensor([2.0 * REPROJECTION_ERROR, 0.5 * REPROJECTION_ERROR, 0.0]) * height
    keypoints[..., 0] += shift[:, None]
    term = keypoints_term(keypoints)
    error = term.relative_error(output, camera)
    torch.testing.assert_close(error, shift / height, atol=1e-4, rtol=0)
    flags = flags_of(params["body_pose"], output, keypoints, camera)
    assert flags["reprojection"] == [True, False, False]
    assert flags["depth"] == [False, False, False]  # a shift keeps the size
    keypoints[1, :, 2] = 0.0  # no keypoint: not measured, no flag
    assert keypoints_term(keypoints).relative_error(output, camera)[1].isnan()
    assert flags_of(params["body_pose"], output, keypoints, camera)["reprojection"][1] is False
