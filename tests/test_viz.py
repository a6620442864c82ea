"""Pictures of fits: the side and top views show what the front overlay hides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fitkit.body import BodyModel, load_body
from fitkit.geometry import Camera
from fitkit.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from fitkit.viz import PAD, VIEW_BACKGROUND, VIEW_MARGIN, compare_views, views

WIDTH, HEIGHT = 96, 128


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body("open")


def t_poses(body: BodyModel, yaw: list[float]) -> torch.Tensor:
    """``(B, V, 3)`` upright T-posed bodies turned by ``yaw`` about the vertical (0 faces the
    camera), 3 m in front of it."""
    turn = axis_angle_to_matrix(torch.tensor([[0.0, angle, 0.0] for angle in yaw]))
    orient = matrix_to_axis_angle(turn @ axis_angle_to_matrix(torch.tensor([math.pi, 0.0, 0.0])))
    count = len(yaw)
    with torch.no_grad():
        vertices = body(global_orient=orient, body_pose=torch.zeros(count, 69),
                        betas=torch.zeros(count, 10), transl=torch.zeros(count, 3)).vertices
    center = (vertices.amin(dim=1, keepdim=True) + vertices.amax(dim=1, keepdim=True)) / 2
    return vertices - center + torch.tensor([0.0, 0.0, 3.0])


def silhouette(panel: np.ndarray, background: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box ``(left, top, width, height)`` of the pixels that differ from
    ``background``, in pixels."""
    rows, columns = np.nonzero((panel != background).any(axis=-1))
    return (columns.min(), rows.min(), columns.max() - columns.min() + 1,
            rows.max() - rows.min() + 1)


def panels(row: np.ndarray, count: int) -> list[np.ndarray]:
    return [row[:, index * (WIDTH + PAD):index * (WIDTH + PAD) + WIDTH] for index in range(count)]


def test_the_side_view_of_a_body_turned_sideways_shows_its_front(body):
    camera = Camera.from_image_size(WIDTH, HEIGHT)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    grey = np.full(3, round(VIEW_BACKGROUND * 255), np.uint8)
    facing, sideways = t_poses(body, [0.0, math.pi / 2])
    front_row = views(image, facing, body.faces, camera, label=None)
    side_row = views(image, sideways, body.faces, camera, label=None)
    assert front_row.shape == side_row.shape == (HEIGHT, 3 * WIDTH + 2 * PAD, 3)
    front_overlay, front_side, front_top = panels(front_row, 3)
    side_overlay, side_side, _ = panels(side_row, 3)

    def aspect(panel, background):
        _, _, width, height = silhouette(panel, background)
        return width / height

    black = np.zeros(3, np.uint8)
    frontal = aspect(front_overlay, black)  # arms spread: about as wide as tall
    assert frontal > 0.8
    assert aspect(side_overlay, black) < 0.4 * frontal  # the overlay hides the arm span
    assert aspect(side_side, grey) == pytest.approx(frontal, rel=0.1)  # the side view shows it
    assert aspect(front_side, grey) < 0.4 * frontal
    # from above, the arm span runs across and the body's depth is short
    assert aspect(front_top, grey) > 3.0
    # each view is framed: the mesh spans the panel up to the margin on its limiting side
    left, top, width, height = silhouette(side_side, grey)
    spans = max(width / WIDTH, height / HEIGHT)
    assert spans == pytest.approx(1 - 2 * VIEW_MARGIN, abs=3 / HEIGHT)
    assert left > 0 and top > 0 and left + width < WIDTH and top + height < HEIGHT


def test_compare_views_puts_the_image_and_one_row_per_body(body):
    camera = Camera.from_image_size(WIDTH, HEIGHT)
    image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    refined, init = t_poses(body, [0.0, 0.3])
    picture = compare_views(image, {"refined": refined, "init": init}, body.faces, camera)
    assert picture.shape == (2 * HEIGHT + PAD, 4 * WIDTH + 3 * PAD, 3)
    first, second = picture[:HEIGHT], picture[HEIGHT + PAD:]
    assert (panels(first, 1)[0][20:] == image[20:]).all()  # the image (its title on top)
    assert (panels(second, 1)[0] == 255).all()  # nothing under it
    assert not (panels(second, 2)[1] == 40).all()  # the initial body over the image
    with pytest.raises(ValueError, match=r"shape \(V, 3\)"):
        views(image, refined[None], body.faces, camera)
