"""Rasterizer, render maps and vertex <-> pixel correspondences against explicit references."""

import math

import numpy as np
import pytest
import torch

from fitkit.geometry import Camera
from fitkit.render import (
    interpolate,
    normal_map,
    pixel_to_vertex,
    rasterize,
    render_maps,
    texture_map,
    vertex_colors,
    vertex_to_pixel,
    vertex_visibility,
)
from fitkit.render.nvdiffrast_backend import (
    fragments_from_rast,
    import_nvdiffrast,
    opengl_projection,
    rasterize_with,
)
from fitkit.render.torch_backend import rasterize_torch

H, W = 20, 24
NEAR = 0.01


def small_camera(batch: int = 1, dtype: torch.dtype = torch.float64) -> Camera:
    """A 24 x 20 camera with an off-centre principal point and unequal focal lengths."""
    return Camera(
        torch.tensor([[30.0, 28.0]], dtype=dtype).expand(batch, 2),
        torch.tensor([[11.2, 9.7]], dtype=dtype).expand(batch, 2),
        torch.tensor([[float(W), float(H)]], dtype=dtype).expand(batch, 2),
    )


def random_triangles(seed: int, num: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` random triangles in front of the camera, some reaching outside the image."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(num, 1, 3, generator=gen, dtype=torch.float64)
    centres = centres * torch.tensor([1.6, 1.4, 2.0]) + torch.tensor([-0.8, -0.7, 2.0])
    offsets = (torch.rand(num, 3, 3, generator=gen, dtype=torch.float64) - 0.5) * 1.2
    vertices = (centres + offsets).reshape(1, -1, 3)
    return vertices, torch.arange(3 * num).view(num, 3)


def brute_force_face_ids(vertices: np.ndarray, faces: np.ndarray, camera: Camera) -> np.ndarray:
    """The nearest triangle covering each pixel centre, by loops over pixels and triangles.

    Screen-space test: project the corners, 2D barycentrics of the pixel centre, depth from the
    perspective-correct ``1 / z = sum(l_i / z_i)``; ties go to the smaller face index.
    """
    (fx, fy), (cx, cy) = camera.focal_length[0].tolist(), camera.principal_point[0].tolist()
    face_id = np.full((H, W), -1)
    best = np.full((H, W), np.inf)
    for v in range(H):
        for u in range(W):
            for f, corners in enumerate(vertices[faces]):
                z = corners[:, 2]
                if (z < NEAR).any():
                    continue
                p = np.stack([fx * corners[:, 0] / z + cx, fy * corners[:, 1] / z + cy], 1)
                area = (p[1, 0] - p[0, 0]) * (p[2, 1] - p[0, 1]) - (p[2, 0] - p[0, 0]) * (
                    p[1, 1] - p[0, 1]
                )
                if abs(area) < 1e-12:
                    continue
                lam = np.empty(3)
                for i in range(3):
                    a, b = p[(i + 1) % 3], p[(i + 2) % 3]
                    lam[i] = ((b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0])) / area
                if (lam < 0).any():
                    continue
                depth = 1.0 / (lam / z).sum()
                if depth < best[v, u]:
                    best[v, u], face_id[v, u] = depth, f
    return face_id


def ray_cast_mask(corners: np.ndarray, camera: Camera) -> np.ndarray:
    """Pixels whose centre ray hits the triangle at ``z >= NEAR``, by a 3x3 solve per pixel."""
    (fx, fy), (cx, cy) = camera.focal_length[0].tolist(), camera.principal_point[0].tolist()
    mask = np.zeros((H, W), dtype=bool)
    for v in range(H):
        for u in range(W):
            d = np.array([(u - cx) / fx, (v - cy) / fy, 1.0])
            # t * d = b0 x0 + b1 x1 + b2 x2, b0 + b1 + b2 = 1
            system = np.zeros((4, 4))
            system[:3, :3], system[:3, 3], system[3, :3] = corners.T, -d, 1.0
            b0, b1, b2, t = np.linalg.solve(system, [0.0, 0.0, 0.0, 1.0])
            mask[v, u] = min(b0, b1, b2) >= 0 and t >= NEAR
    return mask


def facing_grid(n: int, z: float, size: float, dtype=torch.float64):
    """An ``n x n`` vertex grid in the plane ``z``, faces wound so their normals point to ``-z``.

    Returns vertices ``(1, n*n, 3)``, faces ``(F, 3)`` and per-vertex grid coordinates in
    ``[0, 1]^2`` ``(n*n, 2)`` (x to the right, y up in the picture).
    """
    s = torch.linspace(0, 1, n, dtype=dtype)
    gy, gx = torch.meshgrid(s, s, indexing="ij")
    vertices = torch.stack([(gx - 0.5) * size, (gy - 0.5) * size, torch.full_like(gx, z)], -1)
    idx = torch.arange(n * n).view(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)]).view(-1, 3)
    grid = torch.stack([gx, 1 - gy], -1).view(-1, 2)
    return vertices.view(1, -1, 3), faces, grid


def icosphere(subdivisions: int, radius: float, centre: tuple[float, float, float]):
    """An icosphere (trimesh), vertices ``(1, V, 3)`` float64 and faces ``(F, 3)``."""
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    vertices = torch.tensor(mesh.vertices) + torch.tensor(centre, dtype=torch.float64)
    return vertices[None], torch.tensor(mesh.faces)


@pytest.mark.parametrize("seed", range(6))
def test_face_ids_match_brute_force_on_random_triangles(seed):
    vertices, faces = random_triangles(seed)
    camera = small_camera()
    fragments = rasterize(vertices, faces, camera, (H, W), near=NEAR)
    expected = brute_force_face_ids(vertices[0].numpy(), faces.numpy(), camera)
    assert (expected >= 0).sum() > 20
    np.testing.assert_array_equal(fragments.face_id[0].numpy(), expected)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_barycentrics_reproduce_pixel_centres_and_depth(dtype, tol):
    vertices, faces = random_triangles(0)
    vertices = vertices.to(dtype)
    camera = small_camera(dtype=dtype)
    fragments = rasterize(vertices, faces, camera, (H, W), near=NEAR)
    mask = fragments.mask[0]
    bary = fragments.bary[0][mask]
    assert torch.allclose(bary.sum(-1), torch.ones(()).to(dtype), atol=tol)
    assert (bary >= -tol).all()
    points = (bary[..., None] * vertices[0][faces[fragments.face_id[0][mask]]]).sum(-2)
    v, u = mask.nonzero().unbind(-1)
    projected = camera.project(points[None])[0]
    assert torch.allclose(projected, torch.stack([u, v], -1).to(dtype), atol=tol * 10)
    assert torch.allclose(fragments.depth[0][mask], points[:, 2], atol=tol)
    assert (fragments.depth[0][~mask] == 0).all() and (fragments.bary[0][~mask] == 0).all()


def test_triangle_half_behind_camera_is_clipped_at_the_near_plane():
    corners = torch.tensor([[[-1.0, -1.0, -1.0], [2.0, -0.5, 2.0], [-0.5, 1.5, 2.0]]])
    camera = small_camera()
    fragments = rasterize(corners.double(), torch.tensor([[0, 1, 2]]), camera, (H, W), near=NEAR)
    expected = ray_cast_mask(corners[0].double().numpy(), camera)
    assert 0 < expected.sum() < H * W
    np.testing.assert_array_equal(fragments.mask[0].numpy(), expected)
    assert (fragments.depth[0][fragments.mask[0]] >= NEAR).all()


def test_triangles_outside_image_behind_camera_degenerate_or_absent_draw_nothing():
    camera = small_camera()
    outside = [[5.0, 5.0, 2.0], [6.0, 5.0, 2.0], [5.0, 6.0, 2.0]]
    behind = [[0.0, 0.0, -2.0], [1.0, 0.0, -2.0], [0.0, 1.0, -2.0]]
    collinear = [[-0.5, -0.5, 2.0], [0.0, 0.0, 2.0], [0.5, 0.5, 2.0]]
    point = [[0.1, 0.1, 2.0]] * 3
    edge_on = [[0.0, -0.5, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 3.0]]
    vertices = torch.tensor([outside + behind + collinear + point + edge_on], dtype=torch.float64)
    faces = torch.arange(15).view(5, 3)
    fragments = rasterize(vertices, faces, camera, (H, W), near=NEAR)
    assert (fragments.face_id == -1).all()
    assert (fragments.depth == 0).all() and (fragments.bary == 0).all()

    empty = rasterize(torch.zeros(2, 0, 3), torch.zeros(0, 3, dtype=torch.long), camera, (H, W))
    assert empty.face_id.shape == (2, H, W) and (empty.face_id == -1).all()
    assert empty.bary.shape == (2, H, W, 3) and empty.depth.shape == (2, H, W)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tilt", [(0.0, 0.0), (0.7, 0.4), (-0.9, 0.2), (0.3, -0.8), (-0.5, -0.5)])
def test_shared_edges_through_pixel_centres_leave_no_cracks(dtype, tilt):
    # A tilted grid whose vertical edges run exactly through pixel centres (vertices between them):
    # every pixel centre inside the grid must be covered by one of the two triangles of its edge.
    size, focal = 64, 50.0
    camera = Camera.from_image_size(size, size, focal_length=focal, dtype=dtype)
    centre = (size - 1) / 2
    columns = torch.arange(2, size - 2, 4, dtype=dtype)
    uu, vv = torch.meshgrid(columns, columns + 0.5, indexing="xy")
    rx, ry = (uu - centre) / focal, (vv - centre) / focal
    z = 1.0 / (1.0 - tilt[0] * rx - tilt[1] * ry)
    vertices = torch.stack([rx * z, ry * z, z], dim=-1).reshape(1, -1, 3)
    n = len(columns)
    index = torch.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    faces = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)]).reshape(-1, 3)
    mask = rasterize(vertices, faces, camera, (size, size)).mask[0]
    first, last = int(columns[0]), int(columns[-1])
    assert mask[first + 1 : last + 1, first + 1 : last].all()


def test_small_candidate_blocks_give_the_same_fragments():
    vertices, faces = icosphere(2, 0.6, (0.1, 0.0, 2.5))
    camera = small_camera()
    whole = rasterize_torch(vertices, faces, camera, (H, W), NEAR, 100.0)
    chunked = rasterize_torch(vertices, faces, camera, (H, W), NEAR, 100.0, max_candidates=300)
    assert torch.equal(whole.face_id, chunked.face_id)
    assert torch.allclose(whole.bary, chunked.bary) and torch.allclose(whole.depth, chunked.depth)


def test_batch_uses_each_camera_and_broadcasts_one():
    vertices, faces = icosphere(2, 0.6, (0.0, 0.0, 2.5))
    vertices = vertices.expand(2, -1, -1)
    one = small_camera()
    both = rasterize(vertices, faces, one, (H, W))
    assert torch.equal(both.face_id[0], both.face_id[1])
    two = Camera(
        torch.tensor([[30.0, 28.0], [15.0, 14.0]], dtype=torch.float64),
        one.principal_point.expand(2, 2),
        one.image_size.expand(2, 2),
    )
    fragments = rasterize(vertices, faces, two)
    assert fragments.mask[1].sum() < fragments.mask[0].sum()
    assert torch.equal(fragments.face_id[0], both.face_id[0])


def test_backface_culling_keeps_only_faces_towards_the_camera():
    vertices, faces, _ = facing_grid(4, 2.0, 1.0)
    camera = small_camera()
    front = rasterize(vertices, faces, camera, (H, W), cull_backfaces=True)
    back = rasterize(vertices, faces.flip(-1), camera, (H, W), cull_backfaces=True)
    both = rasterize(vertices, faces.flip(-1), camera, (H, W))
    assert front.mask.sum() > 50
    assert not back.mask.any()
    assert torch.equal(both.mask, front.mask)


def test_bary_and_depth_are_differentiable():
    vertices, faces = random_triangles(1, num=3)
    vertices.requires_grad_(True)
    camera = small_camera()

    def render(v):
        fragments = rasterize(v, faces, camera, (H, W))
        return fragments.depth, fragments.bary

    torch.autograd.gradcheck(render, (vertices,), fast_mode=True)


def test_texture_of_a_uv_gradient_gives_the_interpolated_uv():
    vertices, faces, grid = facing_grid(5, 2.0, 1.2)
    camera = small_camera()
    fragments = rasterize(vertices, faces, camera, (H, W))
    th, tw = 16, 32
    rows = 1 - (torch.arange(th, dtype=torch.float64) + 0.5) / th
    cols = (torch.arange(tw, dtype=torch.float64) + 0.5) / tw
    texture = torch.stack(
        [
            cols.expand(th, tw),
            rows[:, None].expand(th, tw),
            torch.zeros(th, tw, dtype=torch.float64),
        ]
    )
    uv = 0.1 + 0.8 * grid  # stays inside the texel centres
    rgb = texture_map(texture, uv, faces, fragments)
    mask = fragments.mask
    expected = interpolate(uv, faces, fragments)
    assert mask.sum() > 100
    assert torch.allclose(rgb[..., :2][mask], expected[mask], atol=1e-6)
    assert (rgb[..., 2] == 0).all() and (rgb[~mask] == 0).all()
    # the picture's top-left corner shows the texture's top-left: small u, large v
    v, u = mask[0].nonzero()[0]
    assert rgb[0, v, u, 0] < 0.5 < rgb[0, v, u, 1]


@pytest.mark.parametrize("smooth", [True, False])
def test_normals_of_a_plane_facing_the_camera_point_to_minus_z(smooth):
    vertices, faces, _ = facing_grid(5, 2.0, 1.2)
    fragments = rasterize(vertices, faces, small_camera(), (H, W))
    normals = normal_map(vertices, faces, fragments, smooth=smooth)[fragments.mask]
    expected = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    assert torch.allclose(normals, expected.expand_as(normals), atol=1e-9)


def test_vertex_colours_span_the_unit_cube_and_maps_have_consistent_shapes():
    vertices, faces = icosphere(2, 0.6, (0.0, 0.0, 2.5))
    rest = vertices[0] - torch.tensor([0.0, 0.0, 2.5], dtype=torch.float64)
    colours = vertex_colors(rest)
    assert torch.allclose(colours.amin(0), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(colours.amax(0), torch.ones(3, dtype=torch.float64))
    fragments = rasterize(vertices, faces, small_camera(), (H, W))
    maps = render_maps(vertices, faces, fragments, rest)
    assert maps.rgb is None
    assert maps.vertex_color.shape == (1, H, W, 3) and maps.normal.shape == (1, H, W, 3)
    assert torch.equal(maps.mask.bool(), fragments.mask)
    # the sphere's front faces the camera: normals towards -z, colours' z (blue) small
    centre = maps.normal[0, H // 2, W // 2]
    assert centre[2] < -0.9 and maps.vertex_color[0, H // 2, W // 2, 2] < 0.2


def test_visibility_marks_the_near_side_of_a_sphere():
    vertices, faces = icosphere(3, 0.5, (0.0, 0.0, 3.0))
    camera = Camera.from_image_size(96, 96, dtype=torch.float64)
    fragments = rasterize(vertices, faces, camera)
    visible = vertex_visibility(fragments, faces, vertices.shape[1])[0]
    direction = vertices[0] - torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    facing = -(direction / direction.norm(dim=-1, keepdim=True))[:, 2]  # cos to the camera
    assert visible[facing > 0.3].all()
    assert not visible[facing < -0.3].any()


def test_smooth_displacements_survive_vertex_to_pixel_to_vertex():
    vertices, faces = icosphere(3, 0.5, (0.0, 0.0, 3.0))
    camera = Camera.from_image_size(160, 160, dtype=torch.float64)
    fragments = rasterize(vertices, faces, camera)
    x, y, z = (vertices[0] - torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)).unbind(-1)
    field = torch.stack([3 * x + torch.sin(2 * y), 2 * y - z], -1)  # pixels, smooth
    pixels = vertex_to_pixel(field, faces, fragments)
    assert pixels.shape == (1, 160, 160, 2) and (pixels[~fragments.mask] == 0).all()
    back = pixel_to_vertex(pixels, faces, fragments, vertices.shape[1])
    visible = vertex_visibility(fragments, faces, vertices.shape[1])
    assert torch.equal(back.valid, back.weight > 0) and not back.valid[~visible].any()
    assert (back.values[~back.valid] == 0).all()
    well_seen = back.weight[0] > 5
    assert well_seen.sum() > 100
    error = (back.values[0][well_seen] - field[well_seen]).norm(dim=-1)
    assert error.max() < 0.03 * field.norm(dim=-1).max()


def test_opengl_projection_puts_pixel_centres_on_nvdiffrast_pixel_centres():
    camera = small_camera()
    near, far = 0.1, 50.0
    proj = opengl_projection(camera, (H, W), near, far)[0]
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(50, 3, generator=gen, dtype=torch.float64) * 2 - 1
    points[:, 2] = points[:, 2].abs() * 10 + 0.5
    clip = torch.cat([points, torch.ones(50, 1, dtype=torch.float64)], -1) @ proj.T
    ndc = clip[:, :3] / clip[:, 3:]
    column = (ndc[:, 0] + 1) * W / 2 - 0.5  # nvdiffrast pixel index of the point
    row_from_bottom = (ndc[:, 1] + 1) * H / 2 - 0.5
    uv = camera.project(points[None])[0]
    assert torch.allclose(column, uv[:, 0]) and torch.allclose(row_from_bottom, H - 1 - uv[:, 1])
    z_ndc = (proj @ torch.tensor([[0.0, 0, near, 1], [0, 0, far, 1]], dtype=torch.float64).T).T
    assert torch.allclose(z_ndc[:, 2] / z_ndc[:, 3], torch.tensor([-1.0, 1.0], dtype=torch.float64))


def test_nvdiffrast_output_conversion_inverts_its_conventions():
    vertices, faces = icosphere(2, 0.6, (0.1, 0.0, 2.5))
    camera = small_camera()
    padded = rasterize(vertices, faces, camera, (24, 32))  # H, W rounded up to multiples of 8
    rast = torch.cat(
        [padded.bary[..., :2], padded.depth[..., None], (padded.face_id + 1)[..., None]], -1
    ).flip(1)  # what nvdiffrast returns: bottom-up rows, ids + 1, (u, v) weights of corners 0, 1
    converted = fragments_from_rast(rast.float(), vertices, faces, (H, W))
    fragments = rasterize(vertices, faces, camera, (H, W))
    assert torch.equal(converted.face_id, fragments.face_id)
    assert torch.allclose(converted.bary, fragments.bary, atol=1e-6)
    assert torch.allclose(converted.depth, fragments.depth, atol=1e-5)


class ClipSpaceRasterizer:
    """A CPU stand-in for ``nvdiffrast.torch`` with its conventions, read off its CUDA kernels.

    Pixel ``(i, j)`` of a ``(h, w)`` output has its centre at NDC ``((2i+1)/w - 1, (2j+1)/h - 1)``,
    row 0 at the bottom; the output is ``(b0, b1, z/w, triangle_id + 1)`` with perspective-correct
    barycentrics from homogeneous edge functions; surface with ``z/w`` outside ``[-1, 1]`` or
    behind the eye is clipped; the nearest ``z/w`` wins.
    """

    @staticmethod
    def rasterize(glctx, pos, tri, resolution, ranges=None, grad_db=True):
        assert pos.dtype == torch.float32 and pos.is_contiguous() and pos.shape[-1] == 4
        assert tri.dtype == torch.int32 and tri.is_contiguous() and len(tri) > 0
        h, w = resolution
        assert h % 8 == 0 and w % 8 == 0, "CudaRaster needs sizes divisible by 8"
        p = pos.double()[:, tri.long()][..., None, None]  # (B, F, 3, 4, 1, 1)
        ndc_y, ndc_x = torch.meshgrid(
            (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1,
            (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1,
            indexing="ij",
        )
        x = p[:, :, :, 0] - ndc_x * p[:, :, :, 3]  # (B, F, 3, h, w)
        y = p[:, :, :, 1] - ndc_y * p[:, :, :, 3]
        a = torch.stack([x[:, :, (i + 1) % 3] * y[:, :, (i + 2) % 3] for i in range(3)], 2)
        a = a - torch.stack([y[:, :, (i + 1) % 3] * x[:, :, (i + 2) % 3] for i in range(3)], 2)
        b = a / a.sum(2, keepdim=True)
        w_hit = (b * p[:, :, :, 3]).sum(2)
        zw = (b * p[:, :, :, 2]).sum(2) / w_hit
        hit = (b >= 0).all(2) & (w_hit > 0) & (zw.abs() <= 1)
        best, face = torch.where(hit, zw, torch.inf).min(1)  # first minimum: smallest id
        covered = best < torch.inf
        b = b.gather(1, face[:, None, None].expand(-1, 1, 3, -1, -1))[:, 0]
        out = torch.stack([b[:, 0], b[:, 1], best, (face + 1).double()], -1)
        return (out * covered[..., None]).float(), None


@pytest.mark.parametrize("cull", [False, True])
def test_nvdiffrast_glue_matches_the_torch_backend_through_a_clip_space_stand_in(cull):
    vertices, faces = icosphere(2, 0.6, (0.1, 0.0, 2.5))
    vertices, camera = vertices.float(), small_camera(dtype=torch.float32)
    reference = rasterize(vertices, faces, camera, (H, W), cull_backfaces=cull)
    fragments = rasterize_with(
        ClipSpaceRasterizer, None, vertices, faces, camera, (H, W), NEAR, 100.0, cull
    )
    same = fragments.face_id == reference.face_id
    assert same.float().mean() >= 0.99
    both = same & reference.mask
    assert torch.allclose(fragments.bary[both], reference.bary[both], atol=1e-4)
    assert torch.allclose(fragments.depth[both], reference.depth[both], atol=1e-4)

    corners = torch.tensor([[[-1.0, -1.0, -1.0], [2.0, -0.5, 2.0], [-0.5, 1.5, 2.0]]])
    triangle = torch.tensor([[0, 2, 1]])  # facing the camera: drawn with and without culling
    reference = rasterize(corners, triangle, camera, (H, W), cull_backfaces=cull)
    assert reference.mask.sum() > 20
    fragments = rasterize_with(
        ClipSpaceRasterizer, None, corners, triangle, camera, (H, W), NEAR, 100.0, cull
    )
    assert (fragments.mask == reference.mask).float().mean() >= 0.99


def test_nvdiffrast_backend_refuses_cpu_tensors_and_names_its_install():
    vertices, faces = random_triangles(0)
    with pytest.raises(ValueError, match="CUDA"):
        rasterize(vertices, faces, small_camera(), (H, W), backend="nvdiffrast")
    with pytest.raises(ValueError, match="unknown render backend"):
        rasterize(vertices, faces, small_camera(), (H, W), backend="opengl")
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install"):
            import_nvdiffrast()


def body_like_scene(batch: int, device: str, width: int = 256, height: int = 256):
    """A ~10k-vertex closed surface 3 m in front of the camera, slightly moved per image."""
    vertices, faces = icosphere(5, 1.0, (0.0, 0.0, 0.0))
    vertices = vertices.float() * torch.tensor([0.3, 0.85, 0.2])
    shift = torch.linspace(-0.05, 0.05, batch)[:, None] * torch.tensor([1.0, 0.5, 0.0])
    vertices = vertices + shift[:, None] + torch.tensor([0.0, 0.0, 3.0])
    camera = Camera.from_image_size(width, height, batch_size=batch)
    return vertices.to(device), faces.to(device), camera.to(device)


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    vertices, faces, camera = body_like_scene(2, "cpu")
    cpu = rasterize(vertices, faces, camera)
    gpu = rasterize(vertices.cuda(), faces.cuda(), camera.to("cuda"))
    same = (gpu.face_id.cpu() == cpu.face_id).float().mean()
    assert same > 0.999
    both = (gpu.face_id.cpu() == cpu.face_id) & cpu.mask
    assert torch.allclose(gpu.bary.cpu()[both], cpu.bary[both], atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("width, height", [(256, 256), (190, 250)])
def test_nvdiffrast_and_torch_backends_agree(width, height):
    pytest.importorskip("nvdiffrast.torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    vertices, faces, camera = body_like_scene(2, "cuda", width, height)
    for cull in (False, True):
        reference = rasterize(vertices, faces, camera, backend="torch", cull_backfaces=cull)
        fragments = rasterize(vertices, faces, camera, backend="nvdiffrast", cull_backfaces=cull)
        assert fragments.face_id.shape == (2, height, width)
        same = fragments.face_id == reference.face_id
        assert same.float().mean() >= 0.995
        both = same & reference.mask
        assert torch.allclose(fragments.bary[both], reference.bary[both], atol=1e-4)
        assert torch.allclose(fragments.depth[both], reference.depth[both], atol=1e-4)


@pytest.mark.gpu
def test_nvdiffrast_clips_at_the_near_plane_and_draws_empty_scenes():
    pytest.importorskip("nvdiffrast.torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    corners = torch.tensor([[[-1.0, -1.0, -1.0], [2.0, -0.5, 2.0], [-0.5, 1.5, 2.0]]]).cuda()
    faces = torch.tensor([[0, 1, 2]]).cuda()
    camera = small_camera(dtype=torch.float32).to("cuda")
    reference = rasterize(corners, faces, camera, (H, W), near=NEAR)
    fragments = rasterize(corners, faces, camera, (H, W), backend="nvdiffrast", near=NEAR)
    assert (fragments.mask == reference.mask).float().mean() > 0.98
    empty = torch.zeros(0, 3, dtype=torch.long, device="cuda")
    nothing = rasterize(corners, empty, camera, (H, W), backend="nvdiffrast")
    assert (nothing.face_id == -1).all()


def test_pixel_to_vertex_of_a_constant_field_is_exact_where_valid():
    vertices, faces = icosphere(2, 0.6, (0.0, 0.0, 2.5))
    fragments = rasterize(vertices, faces, small_camera(), (H, W))
    pixels = torch.full((1, H, W, 2), math.pi, dtype=torch.float64)
    back = pixel_to_vertex(pixels, faces, fragments, vertices.shape[1])
    assert back.valid.any()
    assert torch.allclose(back.values[back.valid], torch.tensor(math.pi, dtype=torch.float64))
