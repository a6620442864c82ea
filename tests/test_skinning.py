"""Sparse evaluation of the body: joints and any vertex subset equal the full smplx evaluation,
values and gradients, and a sparse fit equals a full one."""

from __future__ import annotations

import copy

import pytest
import torch

import fitkit
from fitkit.body.keypoints import SMPL_PARENTS
from fitkit.body.skinning import ancestor_jumps


@pytest.fixture(scope="module")
def body():
    return fitkit.load_body("open")


def params(batch: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"global_orient": torch.randn(batch, 3, generator=generator),
            "body_pose": 0.4 * torch.randn(batch, 69, generator=generator),
            "betas": torch.randn(batch, 10, generator=generator),
            "transl": torch.randn(batch, 3, generator=generator)}


def test_ancestor_doubling_reaches_every_ancestor_in_log_steps() -> None:
    """Following the steps' pointers from a joint visits exactly its ancestors, each step
    doubling the generations spanned; SMPL's 8-deep tree takes 4 steps."""
    jumps = ancestor_jumps(SMPL_PARENTS)
    assert len(jumps) == 4
    for joint in range(24):
        path, node = [], SMPL_PARENTS[joint]
        while node >= 0:
            path.append(node)
            node = SMPL_PARENTS[node]
        for step, ancestors in enumerate(jumps):
            generations = 2 ** step
            expected = path[generations - 1] if generations <= len(path) else 24
            assert ancestors[joint] == expected, (joint, step)
        assert all(ancestors[24] == 24 for ancestors in jumps)


def test_the_chain_equals_composing_parent_by_parent(body) -> None:
    """World rotations and joints of the doubling chain equal the plain recursion
    ``G_j = G_parent(j) [R_j | J_j - J_parent(j)]``."""
    from fitkit.geometry.rotations import axis_angle_to_matrix

    generator = torch.Generator().manual_seed(3)
    rotations = axis_angle_to_matrix(
        torch.randn(4, 24, 3, generator=generator, dtype=torch.float64))
    rest = torch.randn(4, 24, 3, generator=generator, dtype=torch.float64)
    skin = copy.deepcopy(body.skinning).double()
    world, joints = skin.chain(rotations, rest)
    for joint, parent in enumerate(SMPL_PARENTS):
        if parent < 0:
            expect_rotation, expect_joint = rotations[:, 0], rest[:, 0]
        else:
            expect_rotation = world[:, parent] @ rotations[:, joint]
            expect_joint = joints[:, parent] + (
                world[:, parent] @ (rest[:, joint] - rest[:, parent])[..., None])[..., 0]
        torch.testing.assert_close(world[:, joint], expect_rotation)
        torch.testing.assert_close(joints[:, joint], expect_joint)


@pytest.mark.parametrize("pose_blend", [False, True])
def test_every_vertex_equals_smplx(body, pose_blend: bool) -> None:
    """The body's forward pass (fitkit's skinning) equals ``smplx.SMPL`` over the same arrays,
    also with pose blend shapes (random ones: the open body has none), every vertex and a
    subset."""
    if pose_blend:
        body = copy.deepcopy(body)
        generator = torch.Generator().manual_seed(5)
        dirs = 0.02 * torch.randn(body.skinning.posedirs.shape, generator=generator)
        body.skinning.posedirs = dirs  # (P, V, 3)
        body.smpl.posedirs = dirs.flatten(1)  # smplx's (P, V * 3)
        assert body.skinning.pose_blend
    values = params()
    grads = {}
    for name, model in (("smplx", body.smpl), ("fitkit", body)):
        leaves = {key: value.clone().requires_grad_(True) for key, value in values.items()}
        out = model(**leaves)
        (out.vertices.square().sum() + out.joints[:, :24].pow(3).sum()).backward()
        grads[name] = {key: leaf.grad for key, leaf in leaves.items()}
    for key in values:  # the gradients too: the fitter differentiates this path
        torch.testing.assert_close(grads["fitkit"][key], grads["smplx"][key],
                                   rtol=1e-4, atol=1e-3)
    reference = body.smpl(**values)
    output = body(**values)
    assert torch.allclose(output.joints, reference.joints[:, :24], atol=2e-6)
    assert torch.allclose(output.vertices, reference.vertices, atol=2e-6)
    ids = torch.tensor([6999, 3, 4000, 3])
    subset = body(**values, vertex_ids=ids)
    assert torch.allclose(subset.vertices, reference.vertices[:, ids], atol=2e-6)


def test_derived_arrays_follow_their_buffer(body) -> None:
    """The coordinate-major copies of the blend shapes are rebuilt when the buffer is replaced
    or changed in place, so an edited body never skins with stale arrays."""
    skin = copy.deepcopy(body.skinning)
    assert not skin.pose_blend
    first = skin.posedirs_by_component
    assert skin.posedirs_by_component is first  # cached
    skin.posedirs[0, 10, 1] = 1.0  # in place
    assert skin.pose_blend
    assert skin.posedirs_by_component[0, 1, 10] == 1.0
    skin.shapedirs = torch.zeros_like(skin.shapedirs)  # replaced
    assert not skin.shapedirs_by_component.any()
    skin = skin.double()
    assert skin.shapedirs_by_component.dtype == torch.float64


def test_sparse_vertices_and_keypoints_equal_the_full_ones_with_gradients(body) -> None:
    ids = torch.tensor([5, 17, 4000, 6999, 123])
    grads = {}
    outputs = {}
    for mode in ("full", "sparse"):
        values = {key: value.clone().requires_grad_(True) for key, value in params().items()}
        out = body(**values, vertex_ids=None if mode == "full" else ids)
        picked = out.vertices_at(ids)
        loss = picked.square().sum() + out.joints.pow(3).sum()
        loss.backward()
        outputs[mode] = (picked.detach(), out.joints.detach())
        grads[mode] = {key: value.grad for key, value in values.items()}
    assert torch.allclose(outputs["full"][0], outputs["sparse"][0], atol=1e-6)
    assert torch.allclose(outputs["full"][1], outputs["sparse"][1], atol=1e-6)
    for key in grads["full"]:
        assert torch.allclose(grads["full"][key], grads["sparse"][key], rtol=1e-4, atol=1e-4), key


def test_keypoint_sets_from_a_sparse_output_equal_the_full_ones(body) -> None:
    values = params()
    full = body(**values)
    for name in ("openpose25", "markers", "smpl24"):
        sparse = body(**values, vertex_ids=body.selector.vertex_ids(name))
        assert torch.allclose(sparse.keypoints(name), full.keypoints(name), atol=1e-6), name
    joints_only = body(**values, vertex_ids=body.selector.vertex_ids("smpl24"))
    assert joints_only.vertices.shape == (5, 0, 3)


def test_a_sparse_output_refuses_a_vertex_it_did_not_evaluate(body) -> None:
    out = body(**params(), vertex_ids=torch.tensor([1, 2, 3]))
    with pytest.raises(IndexError):
        out.vertices_at(torch.tensor([4]))
    per_sample = out.vertices_at(torch.tensor([[3, 1], [2, 2], [1, 1], [3, 3], [2, 1]]))
    assert torch.equal(per_sample[0, 0], out.vertices[0, 2])


@pytest.mark.parametrize("term_name", ["keypoints", "flow"])
def test_a_sparse_fit_equals_the_full_fit(body, term_name: str, monkeypatch) -> None:
    from fitkit.fitting import SMPLify, preset
    from fitkit.geometry import Camera
    from fitkit.terms import build_term, exact_displacements

    camera = Camera.default(torch.tensor([[128.0, 128.0]] * 3))
    truth = params(3, seed=1) | {"global_orient": torch.tensor([[3.1, 0.0, 0.0]] * 3),
                                 "transl": torch.tensor([[0.0, 0.2, 4.0]] * 3)}
    truth["body_pose"] = 0.3 * truth["body_pose"]
    start = {key: value + 0.05 for key, value in truth.items()}
    if term_name == "keypoints":
        with torch.no_grad():
            pixels = camera.project(body(**truth).keypoints("openpose25"))
        term = build_term("keypoints", keypoints=torch.cat([pixels, torch.ones(3, 25, 1)], -1))
    else:
        with torch.no_grad():
            field = exact_displacements(body, truth, start, camera)
            term = build_term("flow", displacements=field, init_vertices=body(**start).vertices,
                              camera=camera, body=body)
    config = preset("refine").with_stages(iterations=15)
    monkeypatch.setattr(SMPLify, "SPARSE_FRACTION", 1.0)  # sparse however many vertices
    results = {mode: SMPLify(body, None, config, evaluation=mode).fit({term_name: term}, camera,
                                                                      start)
               for mode in ("sparse", "full")}
    assert torch.allclose(results["sparse"].energy, results["full"].energy, rtol=1e-3)
    for key in ("body_pose", "transl", "betas"):
        assert torch.allclose(results["sparse"].params[key], results["full"].params[key],
                              atol=1e-3), key
    assert results["sparse"].vertices.shape == (3, body.num_vertices, 3)
    monkeypatch.undo()
    evaluate = SMPLify(body, None, config)._evaluator({term_name: term})
    if term_name == "keypoints":  # 24 joints and 11 vertices instead of the whole mesh
        assert len(evaluate.keywords["vertex_ids"]) == 11
    else:  # a dense term: sparse while its vertices are at most SPARSE_FRACTION of the mesh
        share = len(term.body_vertices(body)) / body.num_vertices
        monkeypatch.setattr(SMPLify, "SPARSE_FRACTION", share)
        evaluate = SMPLify(body, None, config)._evaluator({term_name: term})
        assert torch.equal(evaluate.keywords["vertex_ids"], term.body_vertices(body))
        monkeypatch.setattr(SMPLify, "SPARSE_FRACTION", 0.99 * share)
        assert SMPLify(body, None, config)._evaluator({term_name: term}) is body
