"""Texture estimation: back-projected vertex colours, per-vertex medians, UV painting."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from fitkit.body import load_body
from fitkit.geometry import Camera
from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from fitkit.render import (
    estimate_texture,
    estimate_vertex_colors,
    interpolate,
    paint_texture,
    rasterize,
    texture_map,
    vertex_colors,
)


def sphere_frames(yaws: list[float], size: int = 128):
    """An icosphere turned by each yaw (radians) at 2.5 m, rendered with vertex colours that
    follow its surface. Returns images (N, 3, H, W), vertices (N, V, 3), faces, colours (V, 3),
    camera."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    rest = torch.tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.tensor(mesh.faces)
    colours = vertex_colors(rest)
    turns = axis_angle_to_matrix(torch.tensor([[0.0, yaw, 0.0] for yaw in yaws]))
    vertices = rest @ turns.transpose(1, 2) + torch.tensor([0.0, 0.0, 2.5])
    camera = Camera.from_image_size(size, size, len(yaws))
    fragments = rasterize(vertices, faces, camera)
    images = interpolate(colours, faces, fragments).permute(0, 3, 1, 2)
    return images, vertices, faces, colours, camera


def test_vertex_colours_are_recovered_at_visible_vertices_over_two_frames():
    images, vertices, faces, colours, camera = sphere_frames([0.0, 0.8])
    estimate, views = estimate_vertex_colors(images, vertices, faces, camera)
    seen = views > 0
    error = (estimate[seen] - colours[seen]).abs().amax(-1)
    assert seen.float().mean() > 0.4 and (views == 2).sum() > 300
    assert error.median() < 0.01 and torch.quantile(error, 0.95) < 0.03
    # the far side of the sphere is seen in neither frame: flagged, no colour
    facing_away = (vertices[..., 2] > 2.5 + 0.2).all(0)
    assert facing_away.sum() > 100 and not seen[facing_away].any()
    assert torch.isnan(estimate[~seen]).all()


def test_the_median_ignores_a_minority_of_wrong_frames():
    images, vertices, faces, colours, camera = sphere_frames([0.0, 0.0, 0.0])
    images[1] = 1.0 - images[1]  # one frame with wrong colours
    estimate, views = estimate_vertex_colors(images, vertices, faces, camera)
    seen = views == 3
    assert seen.sum() > 500
    assert (estimate[seen] - colours[seen]).abs().amax(-1).median() < 0.01


def uv_grid(n: int = 6):
    """A flat ``n x n`` vertex grid whose UVs are its own plane coordinates in [0.1, 0.9]."""
    s = torch.linspace(0.1, 0.9, n)
    gv, gu = torch.meshgrid(s, s, indexing="ij")
    vt = torch.stack([gu, gv], -1).view(-1, 2)
    idx = torch.arange(n * n).view(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, c], -1), torch.stack([b, d, c], -1)]).view(-1, 3)
    return vt, faces


def test_painting_interpolates_vertex_colours_and_fills_the_rest_with_the_fallback():
    vt, faces = uv_grid()
    colours = torch.stack([vt[:, 0], vt[:, 1], 1 - vt[:, 0]], -1)  # linear in UV
    valid = torch.ones(len(vt), dtype=torch.bool)
    valid[vt[:, 0] > 0.8] = False  # the last column of vertices is unknown
    size = 50
    fallback = torch.tensor([1.0, 0.0, 1.0])
    texture, seen = paint_texture(colours, valid, faces, vt, faces, size, fallback, padding=0)
    assert texture.shape == (3, size, size) and seen.shape == (size, size)
    centres = (torch.arange(size) + 0.5) / size
    u, v = centres[None, :].expand(size, size), (1 - centres)[:, None].expand(size, size)
    inside = (u > 0.12) & (u < 0.6) & (v > 0.12) & (v < 0.88)
    expected = torch.stack([u, v, 1 - u])
    assert seen[inside].all()
    assert torch.allclose(texture[:, inside], expected[:, inside], atol=1e-4)
    outside = (u < 0.08) | (v > 0.92)
    assert not seen[outside].any()
    assert torch.equal(texture[:, outside], fallback[:, None].expand(3, int(outside.sum())))
    # padding grows the painted colours into the margin before the fallback
    padded, _ = paint_texture(colours, valid, faces, vt, faces, size, fallback, padding=2)
    assert (padded[1] > 0).sum() > (texture[1] > 0).sum()


@pytest.fixture(scope="module")
def body():
    try:
        return load_body("open")
    except FileNotFoundError as error:
        pytest.skip(f"open body not built: {error}")


def test_texture_of_a_rendered_body_reproduces_its_renders(body):
    size = 128
    upright = axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0]))
    turns = upright @ axis_angle_to_matrix(torch.tensor([[0.0, 0.0, 0.0], [0.0, math.pi, 0.0]]))
    outputs = body(global_orient=matrix_to_axis_angle(turns),
                   transl=torch.tensor([[0.0, 0.2, 2.6]] * 2))
    camera = Camera.from_image_size(size, size, 2)
    fragments = rasterize(outputs.vertices, body.faces, camera)
    truth = vertex_colors(body().vertices[0])
    images = interpolate(truth, body.faces, fragments).permute(0, 3, 1, 2)
    estimate = estimate_texture(images, body, outputs, camera, size=256)
    assert estimate.visible.float().mean() > 0.35  # front and back, not the grazing sides
    error = (estimate.vertex_colors - truth).abs().amax(-1)[estimate.visible]
    assert error.median() < 0.01 and error.quantile(0.95) < 0.03
    unseen = ~estimate.visible
    assert torch.equal(estimate.vertex_colors[unseen], estimate.fallback.expand(int(unseen.sum()),
                                                                                3))
    # rendering with the painted texture gives back the images where the surface was seen
    rendered = texture_map(estimate.texture, *body.uv, fragments).permute(0, 3, 1, 2)
    mask = fragments.mask[:, None].expand_as(rendered)
    difference = (rendered - images).abs()[mask]
    assert difference.median() < 0.01 and difference.quantile(0.9) < 0.02
