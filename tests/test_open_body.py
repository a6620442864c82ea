"""The open body as shipped (numpy + plain smplx, no anny) and the decimation it was built with."""

import numpy as np
import pytest
import smplx
import torch
import trimesh

from fitkit.body import OPEN_BODY_PATH, SMPL_JOINT_NAMES, SMPL_PARENTS
from fitkit.body._decimate import decimate, locked_vertices

J = {name: i for i, name in enumerate(SMPL_JOINT_NAMES)}
FLOAT_KEYS = {
    "v_template": ("V", 3), "shapedirs": ("V", 3, 10), "posedirs": ("V", 3, 207),
    "J_regressor": (24, "V"), "weights": ("V", 24), "vt": ("T", 2), "dp_U": ("V",),
    "dp_V": ("V",),
}
INT_KEYS = {"f": ("F", 3), "ft": ("F", 3), "kintree_table": (2, 24), "vertex_ids": ("K",),
            "marker_ids": ("M",), "dp_I": ("V",)}
STR_KEYS = {"joint_names": (24,), "vertex_ids_names": ("K",), "marker_names": ("M",)}


def _vertex_ids(arrays) -> dict[str, int]:
    names, ids = arrays["vertex_ids_names"].tolist(), arrays["vertex_ids"].tolist()
    return dict(zip(names, ids, strict=True))


@pytest.fixture(scope="module")
def arrays():
    with np.load(OPEN_BODY_PATH, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def model(arrays):
    struct = type("Struct", (), dict(arrays))()
    vertex_ids = _vertex_ids(arrays)
    return smplx.SMPL(model_path=None, data_struct=struct, vertex_ids=vertex_ids, num_betas=10)


@pytest.fixture(scope="module")
def rest(model):
    with torch.no_grad():
        output = model()
    return output.vertices[0].numpy(), output.joints[0, :24].numpy()


def _posed(model, pose: dict[str, tuple[int, float]]) -> np.ndarray:
    body_pose = torch.zeros(1, 69)
    for name, (axis, degrees) in pose.items():
        body_pose[0, 3 * (J[name] - 1) + axis] = np.radians(degrees)
    with torch.no_grad():
        return model(body_pose=body_pose).vertices[0].numpy()


def _height(vertices: np.ndarray) -> float:
    return float(np.ptp(vertices[:, 1]))


def test_file_follows_the_documented_layout(arrays):
    sizes = {"V": len(arrays["v_template"]), "F": len(arrays["f"]), "T": len(arrays["vt"]),
             "K": len(arrays["vertex_ids"]), "M": len(arrays["marker_ids"])}
    for keys, kind in ((FLOAT_KEYS, "f"), (INT_KEYS, "iu"), (STR_KEYS, "U")):
        for key, shape in keys.items():
            want = tuple(sizes.get(s, s) for s in shape)
            assert arrays[key].shape == want, key
            assert arrays[key].dtype.kind in kind, key
    assert all(arrays[key].dtype == np.float32 for key in FLOAT_KEYS)
    assert arrays["dp_I"].dtype == np.uint8
    assert sizes["V"] <= 8000
    assert tuple(arrays["joint_names"]) == SMPL_JOINT_NAMES
    assert tuple(arrays["kintree_table"][0, 1:]) == SMPL_PARENTS[1:]
    assert np.isfinite(arrays["posedirs"]).all()
    assert arrays["f"].max() < sizes["V"] and arrays["ft"].max() < sizes["T"]
    assert (arrays["vt"] >= 0).all() and (arrays["vt"] <= 1).all()


def test_mesh_is_one_closed_outward_surface(arrays):
    mesh = trimesh.Trimesh(arrays["v_template"], arrays["f"], process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0.03  # outward normals; an adult body is ~0.06 m^3
    assert len(mesh.split(only_watertight=False)) == 1


def test_skinning_and_regressor_are_convex(arrays):
    weights, regressor = arrays["weights"], arrays["J_regressor"]
    assert (weights >= 0).all() and np.allclose(weights.sum(1), 1, atol=1e-5)
    assert (regressor >= 0).all() and np.allclose(regressor.sum(1), 1, atol=1e-5)
    assert ((regressor > 0).sum(1) <= 40).all()  # a few vertices per joint


def test_rest_body_is_an_adult_in_smpl_t_pose(rest):
    vertices, joints = rest
    assert 1.5 <= _height(vertices) <= 1.9
    side = {name: joints[J[name]] for name in SMPL_JOINT_NAMES}
    for part in ("hip", "knee", "ankle", "foot", "collar", "shoulder", "elbow", "wrist", "hand"):
        assert side[f"left_{part}"][0] > 0.0 > side[f"right_{part}"][0], part
        np.testing.assert_allclose(side[f"left_{part}"] * [-1, 1, 1], side[f"right_{part}"],
                                   atol=0.01)
    for arm in ("left", "right"):
        shoulder, wrist = side[f"{arm}_shoulder"], side[f"{arm}_wrist"]
        assert abs(wrist[1] - shoulder[1]) < 0.05  # arms horizontal
        assert abs(wrist[0]) > abs(shoulder[0]) + 0.4  # far out along x
        assert abs(side[f"{arm}_hand"][0]) > abs(wrist[0]) > abs(side[f"{arm}_elbow"][0])
        hip, knee, ankle = side[f"{arm}_hip"], side[f"{arm}_knee"], side[f"{arm}_ankle"]
        assert hip[1] > knee[1] > ankle[1] > vertices[:, 1].min()
        assert np.linalg.norm((ankle - hip)[[0, 2]]) < 0.1  # legs straight, slightly apart
        assert side[f"{arm}_foot"][2] > ankle[2] + 0.05  # toes point forward (+z)
    assert side["head"][1] > side["neck"][1] > side["spine3"][1] > side["spine2"][1]
    assert side["spine2"][1] > side["spine1"][1] > side["pelvis"][1] > side["left_knee"][1]
    assert np.linalg.norm(side["pelvis"]) < 0.3


def test_joints_lie_inside_the_body(rest):
    vertices, joints = rest
    for joint, point in enumerate(joints):
        distance = np.linalg.norm(vertices - point, axis=1).min()
        assert distance < 0.12, SMPL_JOINT_NAMES[joint]
        assert (vertices.min(0) < point).all() and (point < vertices.max(0)).all()


def test_body_faces_plus_z(arrays, rest):
    vertices, joints = rest
    nose = vertices[_vertex_ids(arrays)["nose"]]
    assert nose[2] > joints[J["head"]][2] + 0.05


def test_first_shape_component_changes_height(model, rest):
    heights = []
    for value in (-2.0, 2.0):
        betas = torch.zeros(1, 10)
        betas[0, 0] = value
        with torch.no_grad():
            heights.append(_height(model(betas=betas).vertices[0].numpy()))
    assert 0.15 < heights[1] - heights[0] < 0.6  # +-2 sigma of adult stature
    assert heights[0] < _height(rest[0]) < heights[1]


def test_shape_components_have_decreasing_size(arrays):
    norms = np.linalg.norm(arrays["shapedirs"].reshape(-1, 10), axis=0)
    assert (np.diff(norms) <= 1e-6).all()


@pytest.mark.parametrize("pose", [
    {"left_elbow": (1, -90.0), "right_elbow": (1, 90.0)},
    {"left_knee": (0, 90.0), "right_knee": (0, 90.0)},
    {"left_hip": (0, -60.0), "right_shoulder": (2, 60.0)},
])
def test_bending_keeps_the_mesh_intact(arrays, model, rest, pose):
    faces = arrays["f"]
    bent = _posed(model, pose)

    def edges(v):
        return np.linalg.norm(v[faces] - v[np.roll(faces, 1, axis=1)], axis=2)

    def areas(v):
        return np.linalg.norm(np.cross(v[faces[:, 1]] - v[faces[:, 0]],
                                       v[faces[:, 2]] - v[faces[:, 0]]), axis=1)

    ratio = edges(bent) / edges(rest[0])
    low, high = np.percentile(ratio, [0.1, 99.9])
    assert 0.4 < low and high < 2.5
    shrink = areas(bent) / areas(rest[0])
    assert (shrink < 0.1).sum() <= 0.001 * len(faces)
    assert shrink.min() > 0.02


def test_densepose_parts_cover_the_body_injectively(arrays):
    parts, u, v = arrays["dp_I"], arrays["dp_U"], arrays["dp_V"]
    vertices = arrays["v_template"]
    assert set(np.unique(parts)) == set(range(1, 25))
    assert (u >= 0).all() and (u <= 1).all() and (v >= 0).all() and (v <= 1).all()
    left = vertices[:, 0] > 0.05
    assert set(parts[left]) >= {4, 5, 8, 10, 12, 14, 15, 17, 19, 21}  # left limbs at +x
    assert not set(parts[left]) & {3, 6, 7, 9, 11, 13, 16, 18, 20, 22}
    assert vertices[parts == 2, 2].mean() > vertices[parts == 1, 2].mean()  # 2 = torso front
    close = 0
    for part in range(1, 25):
        rows = np.flatnonzero(parts == part)
        uv = np.stack([u[rows], v[rows]], 1)
        gap = np.linalg.norm(uv[:, None] - uv[None], axis=2)
        np.fill_diagonal(gap, np.inf)
        nearest = rows[np.argmin(gap, axis=1)]
        close += (np.linalg.norm(vertices[nearest] - vertices[rows], axis=1) < 0.05).sum()
    assert close > 0.95 * len(parts)  # a (part, U, V) lookup finds a nearby vertex


def test_vertex_keypoints_sit_where_they_belong(arrays, rest):
    vertices, joints = rest
    ids = _vertex_ids(arrays)
    point = {name: vertices[index] for name, index in ids.items()}
    head = joints[J["head"]]
    assert point["nose"][2] > point["leye"][2] > head[2]
    assert point["leye"][1] > point["nose"][1] and point["reye"][1] > point["nose"][1]
    assert point["leye"][0] > 0 > point["reye"][0]
    assert point["lear"][0] > point["leye"][0] and point["rear"][0] < point["reye"][0]
    for side, word in (("L", "left"), ("R", "right")):
        ankle = joints[J[f"{word}_ankle"]]
        heel, big, small = point[f"{side}Heel"], point[f"{side}BigToe"], point[f"{side}SmallToe"]
        assert heel[2] < ankle[2] and heel[1] < ankle[1]
        assert big[2] > ankle[2] + 0.1 and small[2] > ankle[2] + 0.05
        assert abs(big[0]) < abs(small[0])  # big toe on the inside
        hand = joints[J[f"{word}_hand"]]
        for finger in ("thumb", "index", "middle", "ring", "pinky"):
            tip = point[f"{side.lower()}{finger}"]
            assert np.sign(tip[0]) == np.sign(hand[0]), finger
        middle = point[f"{side.lower()}middle"]
        assert abs(middle[0]) > abs(hand[0]) + 0.05
        assert point[f"{side.lower()}thumb"][2] > point[f"{side.lower()}pinky"][2]


def test_markers_are_named_and_sided(arrays):
    names = arrays["marker_names"].tolist()
    vertices = arrays["v_template"]
    assert 50 <= len(names) <= 80 and len(set(names)) == len(names)
    assert len(set(arrays["marker_ids"].tolist())) == len(names)
    for name, index in zip(names, arrays["marker_ids"], strict=True):
        if name[0] in "LR" and f"{'R' if name[0] == 'L' else 'L'}{name[1:]}" in names:
            assert (vertices[index, 0] > 0) == (name[0] == "L"), name


# --------------------------------------------------------------------------- decimation


@pytest.fixture(scope="module")
def charted_sphere():
    """An icosphere with two UV charts (upper and lower half): seams along the equator."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    tilt = trimesh.transformations.rotation_matrix(0.3, [1.0, 2.0, 0.5])[:3, :3]
    vertices, faces = np.asarray(sphere.vertices) @ tilt.T, np.asarray(sphere.faces)
    chart = (vertices[faces].mean(axis=1)[:, 2] < 0).astype(int)
    corner_keys = faces * 2 + chart[:, None]
    keys, face_uv = np.unique(corner_keys, return_inverse=True)
    face_uv = face_uv.reshape(faces.shape)
    points, lower = vertices[keys // 2], keys % 2
    # stereographic projection from the opposite pole: no fold within a chart
    plane = points[:, :2] / (1.0 + np.where(lower, -points[:, 2], points[:, 2]))[:, None]
    uv = 0.5 * (plane - plane.min(0)) / np.ptp(plane, axis=0).max()
    uv[:, 0] += 0.5 * lower
    return vertices, faces, face_uv, uv, lower


def test_decimation_keeps_a_vertex_subset_and_a_valid_surface(charted_sphere):
    vertices, faces, face_uv, uv, _ = charted_sphere
    result = decimate(vertices, faces, face_uv, uv, target=300)
    assert 300 <= len(result.kept) < 330
    assert np.array_equal(result.kept, np.unique(result.kept))
    assert result.kept.max() < len(vertices)
    mesh = trimesh.Trimesh(vertices[result.kept], result.faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2 and mesh.volume > 0
    normals = mesh.face_normals
    centres = mesh.triangles_center
    assert (np.sum(normals * centres, axis=1) > 0).all()  # all still facing outwards


def test_decimation_preserves_uv_charts_and_seams(charted_sphere):
    vertices, faces, face_uv, uv, chart_of_uv = charted_sphere
    locked = locked_vertices(faces, face_uv, len(vertices))
    assert locked.sum() > 0
    result = decimate(vertices, faces, face_uv, uv, target=300)
    assert np.isin(np.flatnonzero(locked), result.kept).all()  # seam vertices survive
    original_corner = {}
    for f_vertices, f_uv in zip(faces, face_uv, strict=True):
        for vertex, uv_index in zip(f_vertices, f_uv, strict=True):
            original_corner.setdefault(uv_index, vertex)
    new_vertices = result.kept[result.faces]
    source = result.uv_source[result.face_uv]
    for f_vertices, f_source in zip(new_vertices, source, strict=True):
        # every corner's UV is one its vertex had before, all three from one chart
        assert all(original_corner[s] == v for v, s in zip(f_vertices, f_source, strict=True))
        assert len({chart_of_uv[s] for s in f_source}) == 1
    np.testing.assert_array_equal(result.uv, uv[result.uv_source])
    first = result.uv[result.face_uv[:, 1]] - result.uv[result.face_uv[:, 0]]
    second = result.uv[result.face_uv[:, 2]] - result.uv[result.face_uv[:, 0]]
    signed = first[:, 0] * second[:, 1] - first[:, 1] * second[:, 0]
    chart = chart_of_uv[source[:, 0]]
    for side in (0, 1):  # no UV triangle folds over within a chart
        assert len(set(np.sign(signed[chart == side]))) == 1
