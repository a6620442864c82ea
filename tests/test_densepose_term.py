"""The DensePose data term and the UV_Processed.mat loader, on the open body."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io
import torch

from fitkit.body import BodyFileError, BodyModel, load_body
from fitkit.body.densepose_uv import DensePoseUV, read_uv_processed
from fitkit.fitting import SMPLify, preset
from fitkit.geometry import Camera
from fitkit.render import rasterize
from fitkit.terms import DensePoseTerm, build_term

IMAGE_SIZE = 160


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body("open")


def scene(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Upright people facing the camera about 3 m away, mildly posed."""
    g = torch.Generator().manual_seed(seed)
    global_orient = torch.tensor([[math.pi, 0.0, 0.0]]).repeat(batch, 1)
    transl = torch.tensor([[0.0, -0.2, 3.0]]) + 0.1 * torch.randn(batch, 3, generator=g)
    return {
        "global_orient": global_orient + 0.1 * torch.randn(batch, 3, generator=g),
        "body_pose": 0.1 * torch.randn(batch, 69, generator=g),
        "betas": torch.zeros(batch, 10),
        "transl": transl,
    }


def camera(batch: int = 2) -> Camera:
    return Camera.from_image_size(IMAGE_SIZE, IMAGE_SIZE, batch)


def encode_iuv(body: BodyModel, params: dict[str, torch.Tensor], cam: Camera) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 IUV of the posed body, as a renderer of DensePose labels makes it:
    a pixel's part is that of its visible triangle's corner of largest weight, its U and V the
    barycentric interpolation over the triangle's corners of that part."""
    with torch.no_grad():
        fragments = rasterize(body(**params).vertices, body.faces, cam)
    corners = body.faces[fragments.face_id.clamp(min=0)]  # (B, H, W, 3)
    corner_parts = body.dp_I.long()[corners]
    part = corner_parts.gather(-1, fragments.bary.argmax(dim=-1, keepdim=True)).squeeze(-1)
    weights = fragments.bary * (corner_parts == part[..., None])
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-12)
    u = (weights * body.dp_U[corners]).sum(dim=-1)
    v = (weights * body.dp_V[corners]).sum(dim=-1)
    iuv = torch.stack([part.float(), 255.0 * u, 255.0 * v], dim=-1).round()
    return torch.where(fragments.mask[..., None], iuv, 0.0).to(torch.uint8)


def moved(params: dict[str, torch.Tensor], step: float) -> dict[str, torch.Tensor]:
    """The scene with the translation off by ``step`` m along x and the left shoulder and
    elbow rotated by ``4 step`` rad."""
    out = dict(params)
    out["transl"] = params["transl"] + torch.tensor([step, 0.5 * step, 0.0])
    body_pose = params["body_pose"].clone()
    body_pose[:, 45:48] += 4.0 * step  # left shoulder (joint 16)
    body_pose[:, 51:54] += 4.0 * step  # left elbow (joint 18)
    out["body_pose"] = body_pose
    return out


def test_energy_is_near_zero_at_the_truth_and_grows_monotonically_away_from_it(body):
    params, cam = scene(), camera()
    term = build_term("densepose", iuv=encode_iuv(body, params, cam), body=body)
    assert isinstance(term, DensePoseTerm) and term.valid.all()
    with torch.no_grad():
        energies = torch.stack(
            [term.energy(body(**moved(params, step)), cam) for step in (0, 0.01, 0.02, 0.05, 0.1)]
        )
    # At the truth only the distance of a pixel to its nearest vertex remains: about one
    # (crop) pixel per target, against 25 keypoints' worth of residuals (``reference_points``).
    assert (energies[0] / term.reference_points < 2.0).all()
    assert (energies.diff(dim=0) > 0).all()
    assert (energies[-1] > 50 * energies[0]).all()


def test_targets_lie_on_their_parts_and_next_to_their_vertices_at_the_truth(body):
    params, cam = scene(), camera()
    iuv = encode_iuv(body, params, cam)
    term = DensePoseTerm(iuv, body=body, max_samples=500)
    b, n = term.used.nonzero(as_tuple=True)
    u, v = term.pixels[b, n].unbind(-1)
    pixel_parts = iuv[b, v, u, 0].long()
    assert (term.parts[b, n] == pixel_parts).all()
    assert (body.dp_I.long()[term.vertex[b, n]] == pixel_parts).all()
    with torch.no_grad():
        projected = cam.project(body(**params).vertices)[b, term.vertex[b, n]]
    distance = (projected - term.targets[b, n]).norm(dim=-1)
    assert distance.median() < 1.0 and distance.max() < 4.0


def test_subsampling_is_deterministic_and_draws_distinct_person_pixels(body):
    params, cam = scene(), camera()
    iuv = encode_iuv(body, params, cam)
    first = DensePoseTerm(iuv, body=body, max_samples=300, seed=3)
    again = DensePoseTerm(iuv, body=body, max_samples=300, seed=3)
    other = DensePoseTerm(iuv, body=body, max_samples=300, seed=4)
    assert torch.equal(first.pixels, again.pixels) and torch.equal(first.vertex, again.vertex)
    assert not torch.equal(first.pixels, other.pixels)
    assert first.pixels.shape == (2, 300, 2) and first.used.all()
    flat = first.pixels[..., 1] * IMAGE_SIZE + first.pixels[..., 0]
    assert all(len(row.unique()) == 300 for row in flat)
    assert (iuv[torch.arange(2)[:, None], first.pixels[..., 1], first.pixels[..., 0], 0] > 0).all()

    everything = DensePoseTerm(iuv, body=body, max_samples=IMAGE_SIZE**2)
    assert torch.equal(everything.num_targets, (iuv[..., 0] > 0).sum(dim=(1, 2)))


def test_a_sample_without_person_pixels_is_invalid_with_zero_energy(body):
    params, cam = scene(), camera()
    iuv = encode_iuv(body, params, cam)
    iuv[1] = 0
    term = DensePoseTerm(iuv, body=body)
    assert term.valid.tolist() == [True, False]
    with torch.no_grad():
        energy = term.energy(body(**moved(params, 0.05)), cam)
    assert energy[0] > 0 and energy[1] == 0


def test_torso_view_keeps_torso_parts_only(body):
    params, cam = scene(), camera()
    term = DensePoseTerm(encode_iuv(body, params, cam), body=body)
    torso = term.torso()
    kept = torso.used.nonzero(as_tuple=True)
    assert 0 < len(kept[0]) < term.used.sum()
    assert set(torso.parts[kept].unique().tolist()) <= {1, 2}
    assert torso.rho is None and term.rho == 100.0
    with torch.no_grad():
        assert (torso.energy(body(**moved(params, 0.05)), cam) > 0).all()


def write_uv_processed(path, parts, faces, u, v, smpl_vertex) -> None:
    """A ``UV_Processed.mat`` in DensePose's layout (1-based indices, MATLAB vectors)."""
    scipy.io.savemat(
        path,
        {
            "All_FaceIndices": np.asarray(parts, dtype=np.uint8)[:, None],
            "All_Faces": np.asarray(faces, dtype=np.float64) + 1,
            "All_U_norm": np.asarray(u, dtype=np.float64)[:, None],
            "All_V_norm": np.asarray(v, dtype=np.float64)[:, None],
            "All_vertices": (np.asarray(smpl_vertex, dtype=np.uint32) + 1)[None, :],
        },
    )


def tiny_uv_processed(path) -> dict[str, np.ndarray]:
    """A 6-vertex body cut along a part seam: body vertices 2 and 3 appear in parts 1 and 2."""
    layout = {
        "smpl_vertex": np.array([0, 1, 2, 3, 2, 3, 4, 5]),
        "u": np.linspace(0.1, 0.8, 8),
        "v": np.linspace(0.9, 0.2, 8),
        "faces": np.array([[0, 1, 2], [1, 3, 2], [4, 5, 6], [5, 7, 6]]),
        "parts": np.array([1, 1, 2, 2]),
    }
    write_uv_processed(path, **layout)
    return layout


def test_uv_processed_loads_in_densepose_layout(tmp_path):
    path = tmp_path / "UV_Processed.mat"
    layout = tiny_uv_processed(path)
    table = read_uv_processed(path, num_vertices=6)
    np.testing.assert_array_equal(table.vertex, layout["smpl_vertex"])
    np.testing.assert_array_equal(table.part, [1, 1, 1, 1, 2, 2, 2, 2])
    np.testing.assert_allclose(table.u, layout["u"])
    np.testing.assert_allclose(table.v, layout["v"])
    dp_I, dp_U, dp_V = table.per_vertex()
    np.testing.assert_array_equal(dp_I, [1, 1, 1, 1, 2, 2])
    np.testing.assert_allclose(dp_U, layout["u"][[0, 1, 2, 3, 6, 7]])
    np.testing.assert_allclose(dp_V, layout["v"][[0, 1, 2, 3, 6, 7]])

    # A pixel of part 2 at the U, V of DensePose vertex 4 (body vertex 2 on the part-2 side).
    iuv = torch.zeros(1, 4, 4, 3, dtype=torch.uint8)
    iuv[0, 1, 2] = torch.tensor([2, round(255 * layout["u"][4]), round(255 * layout["v"][4])])
    term = DensePoseTerm(iuv, uv=table)
    assert term.num_targets.tolist() == [1]
    assert term.vertex[term.used].tolist() == [2] and term.pixels[term.used].tolist() == [[2, 1]]


def test_uv_processed_errors_name_the_file_and_array(tmp_path):
    path = tmp_path / "UV_Processed.mat"
    tiny_uv_processed(path)
    with pytest.raises(BodyFileError, match="All_vertices"):
        read_uv_processed(path, num_vertices=4)  # SMPL vertex ids up to 6
    broken = tmp_path / "broken.mat"
    contents = scipy.io.loadmat(path)
    del contents["All_U_norm"]
    scipy.io.savemat(broken, {k: v for k, v in contents.items() if not k.startswith("__")})
    with pytest.raises(BodyFileError, match="broken.mat.*All_U_norm"):
        read_uv_processed(broken)
    with pytest.raises(ValueError, match="describes 6890 vertices, body .* has 7000"):
        DensePoseTerm(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), body=load_body("open"), uv=path)


def test_open_body_labels_round_trip_through_the_table(body):
    table = DensePoseUV.from_per_vertex(
        body.dp_I.numpy(), body.dp_U.numpy(), body.dp_V.numpy(), source="open"
    )
    dp_I, dp_U, dp_V = table.per_vertex()
    np.testing.assert_array_equal(dp_I, body.dp_I.numpy())
    np.testing.assert_allclose(dp_U, body.dp_U.numpy())
    np.testing.assert_allclose(dp_V, body.dp_V.numpy())


def test_bad_inputs_get_clear_errors(body):
    iuv = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"iuv must be uint8 of shape \(B, H, W, 3\)"):
        DensePoseTerm(iuv[0], body=body)
    with pytest.raises(ValueError, match="iuv must be uint8"):
        DensePoseTerm(iuv.float(), body=body)
    with pytest.raises(ValueError, match="iuv must be uint8"):
        DensePoseTerm(iuv[..., :2], body=body)
    wrong_order = iuv.clone()
    wrong_order[0, 0, 0, 0] = 200
    with pytest.raises(ValueError, match="channel 0"):
        DensePoseTerm(wrong_order, body=body)
    with pytest.raises(ValueError, match="UV_Processed.mat"):
        DensePoseTerm(iuv)
    term = DensePoseTerm(iuv, body=body)
    with pytest.raises(ValueError, match="batch sizes disagree"):
        term.energy(body(**scene(3)), camera(3))


def test_fitting_to_densepose_moves_toward_the_truth(body):
    params, cam = scene(batch=1, seed=2), camera(1)
    g = torch.Generator().manual_seed(5)
    init = {name: value.clone() for name, value in params.items()}
    init["body_pose"] += 0.15 * torch.randn(1, 69, generator=g)
    init["transl"] += torch.tensor([[0.05, 0.03, 0.1]])
    term = build_term("densepose", iuv=encode_iuv(body, params, cam), body=body)
    result = SMPLify(body, None, preset("refine").with_stages(iterations=30)).fit(term, cam, init)
    with torch.no_grad():
        truth = body(**params).vertices
        before = (body(**init).vertices - truth).norm(dim=-1).mean()
    after = (result.vertices - truth).norm(dim=-1).mean()
    assert after < 0.8 * before
