"""The flow data term (seed 003, Eq. 5-7) and exact displacement fields, on the open body."""

from __future__ import annotations

import pytest
import torch
from test_densepose_term import IMAGE_SIZE, camera, moved, scene

from fitkit.body import BodyModel, load_body
from fitkit.fitting import SMPLify, preset
from fitkit.render import rasterize
from fitkit.terms import FlowTerm, build_term, exact_displacements


@pytest.fixture(scope="module")
def body() -> BodyModel:
    return load_body("open")


def perturbed(params: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """An initial estimate: pose off by 0.1 rad per axis at random, translation a few cm off."""
    g = torch.Generator().manual_seed(seed)
    init = {name: value.clone() for name, value in params.items()}
    init["body_pose"] += 0.1 * torch.randn(init["body_pose"].shape, generator=g)
    init["transl"] += torch.tensor([0.04, -0.03, 0.08])
    return init


def vertices(body: BodyModel, params: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return body(**params).vertices


def test_exact_field_of_an_image_plane_translation_is_that_translation(body):
    params, cam = scene(), camera()
    shift = torch.tensor([0.05, -0.02, 0.0])
    target = dict(params, transl=params["transl"] + shift)
    field = exact_displacements(body, target, params, cam)
    assert field.shape == (2, 2, IMAGE_SIZE, IMAGE_SIZE)
    fragments = rasterize(vertices(body, params), body.faces, cam)
    covered = fragments.mask
    # A vertex at depth z moves by f * shift / z pixels; the visible point at depth z too.
    expected = cam.focal_length[:, :, None, None] * shift[:2, None, None] / fragments.depth[:, None]
    torch.testing.assert_close(
        field.permute(0, 2, 3, 1)[covered],
        expected.permute(0, 2, 3, 1)[covered],
        rtol=1e-3,
        atol=1e-3,
    )
    assert (field.permute(0, 2, 3, 1)[~covered] == 0).all()


def test_targets_from_the_exact_field_are_the_true_projections_of_visible_vertices(body):
    params, cam = scene(), camera()
    init = perturbed(params)
    field = exact_displacements(body, params, init, cam)
    term = build_term(
        "flow", displacements=field, init_vertices=vertices(body, init), camera=cam, body=body
    )
    assert isinstance(term, FlowTerm) and term.valid.all()
    targets, visible = term.per_vertex()
    assert 1000 < visible.sum(dim=1).min() < body.num_vertices / 2  # the far side is hidden
    # the term keeps only the visible vertices' slots, in vertex order
    assert term.vertex.shape[1] == visible.sum(dim=1).max()
    assert torch.equal(term.vertex[term.used], visible.nonzero()[:, 1])
    truth = cam.project(vertices(body, params))
    # Eq. 5 averages the field over the pixels around a vertex, which blurs it slightly where
    # it changes fast (displacements here reach ~30 px).
    error = (truth - targets).norm(dim=-1)[visible]
    assert error.median() < 0.1 and error.quantile(0.99) < 0.5 and error.max() < 1.0
    assert (targets[~visible] == 0).all()
    # Channels-last fields give the same targets.
    again = FlowTerm.from_displacements(
        field.permute(0, 2, 3, 1), vertices(body, init), cam, faces=body.faces
    )
    assert torch.equal(again.used, term.used)
    torch.testing.assert_close(again.targets, term.targets)


def test_energy_is_near_zero_at_the_truth_and_grows_monotonically_away_from_it(body):
    params, cam = scene(), camera()
    init = perturbed(params)
    term = FlowTerm.from_displacements(
        exact_displacements(body, params, init, cam), vertices(body, init), cam, body=body
    )
    steps = (0, 0.01, 0.02, 0.05, 0.1)
    with torch.no_grad():
        energies = torch.stack([term.energy(body(**moved(params, s)), cam) for s in steps])
    with torch.no_grad():
        start = term.energy(body(**init), cam)
    assert (energies[0] < 1e-3 * start).all() and (energies[0] < 25.0).all()
    assert (energies.diff(dim=0) > 0).all()


def test_per_vertex_targets_count_only_visible_vertices(body):
    params, cam = scene(), camera()
    truth = cam.project(vertices(body, params))
    visible = torch.rand(truth.shape[:2], generator=torch.Generator().manual_seed(0)) < 0.3
    visible[1] = False
    garbage = torch.where(visible[..., None], truth, torch.full_like(truth, 1e4))
    term = build_term("flow", targets=garbage, visible=visible)
    same = FlowTerm.from_targets(torch.where(visible[..., None], truth, float("nan")), visible)
    assert term.valid.tolist() == [True, False]
    torch.testing.assert_close(term.targets, same.targets)
    targets, used = term.per_vertex()
    assert torch.equal(used, visible)
    torch.testing.assert_close(targets, torch.where(visible[..., None], truth, 0.0))
    with torch.no_grad():
        assert term.energy(body(**params), cam).abs().max() < 1e-6
        far = term.energy(body(**moved(params, 0.05)), cam)
        torch.testing.assert_close(far, same.energy(body(**moved(params, 0.05)), cam))
    assert far[0] > 0 and far[1] == 0


def test_torso_view_keeps_vertices_of_torso_parts(body):
    params, cam = scene(), camera()
    truth = cam.project(vertices(body, params))
    visible = torch.ones(truth.shape[:2], dtype=torch.bool)
    torso = FlowTerm.from_targets(truth, visible, body=body).torso()
    parts = body.dp_I.long()
    kept = torso.vertex[0][torso.used[0]]
    assert torch.equal(kept, ((parts == 1) | (parts == 2)).nonzero()[:, 0])
    assert torso.rho is None
    assert FlowTerm.from_targets(truth, visible).torso().used.all()  # no labels: all vertices


def test_torso_view_reads_only_the_vertices_it_declares(body):
    """A body evaluated only at the torso view's ``body_vertices`` (as the sparse loop and the
    LM Jacobian evaluate it) has every vertex the view gathers, and the view's energy equals the
    full mesh's; also when a sample has no torso target."""
    params, cam = scene(), camera()
    truth = cam.project(vertices(body, params))
    visible = torch.ones(truth.shape[:2], dtype=torch.bool)
    visible[1] = (body.dp_I.long() > 2)  # the second sample sees no torso
    torso = FlowTerm.from_targets(truth + 3.0, visible, body=body).torso()
    ids = torso.body_vertices(body)
    assert len(ids) < 0.3 * body.num_vertices
    sparse, full = body(**params, vertex_ids=ids), body(**params)
    torch.testing.assert_close(torso.energy(sparse, cam), torso.energy(full, cam))
    assert torso.energy(full, cam)[1] == 0


def test_estimated_translation_places_the_body_on_its_targets(body):
    params, cam = scene(), camera()
    truth = cam.project(vertices(body, params))
    term = FlowTerm.from_targets(truth, torch.ones(truth.shape[:2], dtype=torch.bool))
    rest = {name: value for name, value in params.items() if name != "transl"}
    estimate = term.estimate_transl(body(**rest), cam)
    assert (estimate - params["transl"]).norm(dim=-1).max() < 0.1


def test_bad_inputs_get_clear_errors(body):
    params, cam = scene(), camera()
    init = vertices(body, params)
    field = torch.zeros(2, 2, IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(ValueError, match="either targets= and visible="):
        FlowTerm(displacements=field, camera=cam)
    with pytest.raises(ValueError, match="either targets= and visible="):
        FlowTerm(
            targets=torch.zeros(2, 10, 2),
            visible=torch.ones(2, 10, dtype=torch.bool),
            displacements=field,
            init_vertices=init,
            camera=cam,
        )
    with pytest.raises(ValueError, match="faces= or body="):
        FlowTerm(displacements=field, init_vertices=init, camera=cam)
    with pytest.raises(ValueError, match=r"\(H, W\) = \(160, 160\)"):
        FlowTerm(displacements=field[..., :100], init_vertices=init, camera=cam, body=body)
    with pytest.raises(ValueError, match=r"visible must be bool of shape \(2, 10\)"):
        FlowTerm(targets=torch.zeros(2, 10, 2), visible=torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"targets must have shape \(B, V, 2\)"):
        FlowTerm(targets=torch.zeros(2, 10, 3), visible=torch.ones(2, 10, dtype=torch.bool))
    small = FlowTerm(targets=torch.zeros(2, 10, 2), visible=torch.ones(2, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="10 vertices, the body output has 7000"):
        small.energy(body(**params), cam)


def test_fitting_to_exact_displacements_moves_toward_the_truth(body):
    params, cam = scene(batch=1, seed=2), camera(1)
    init = perturbed(params, seed=5)
    term = build_term(
        "flow",
        displacements=exact_displacements(body, params, init, cam),
        init_vertices=vertices(body, init),
        camera=cam,
        body=body,
    )
    result = SMPLify(body, None, preset("refine").with_stages(iterations=30)).fit(term, cam, init)
    truth = vertices(body, params)
    before = (vertices(body, init) - truth).norm(dim=-1).mean()
    after = (result.vertices - truth).norm(dim=-1).mean()
    assert after < 0.6 * before
