"""Rasterizers: the PyTorch one against exact expectations on the CPU, and against nvdiffrast on a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prolific.field.dmtet import DMTet, TetGrid
from prolific.render.cameras import orbit_cameras
from prolific.render.mesh import clip_positions, render_mesh
from prolific.render.raster import TorchRasterizer, import_nvdiffrast, make_rasterizer

H, W = 12, 16


def pixel_centres_ndc(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """NDC (x, y) of each pixel centre, rows bottom-up as nvdiffrast lays them out."""
    xs = (np.arange(w) + 0.5) / w * 2 - 1
    ys = (np.arange(h) + 0.5) / h * 2 - 1
    return np.meshgrid(xs, ys)  # [h,w] each


def test_make_rasterizer_on_cpu_is_the_torch_one():
    assert isinstance(make_rasterizer("cpu"), TorchRasterizer)


def test_single_triangle_coverage_and_barycentrics_are_exact():
    tri = np.array([[-0.8, -0.9], [0.7, -0.2], [-0.3, 0.6]])
    clip = torch.tensor([[x, y, 0.25, 1.0] for x, y in tri], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast = TorchRasterizer().rasterize(clip[None], faces, (H, W))[0].numpy()
    # Independent reference: solve p = u·a + v·b + (1 − u − v)·c at each pixel centre.
    px, py = pixel_centres_ndc(H, W)
    m = np.array([[tri[0, 0] - tri[2, 0], tri[1, 0] - tri[2, 0]], [tri[0, 1] - tri[2, 1], tri[1, 1] - tri[2, 1]]])
    rhs = np.stack([px - tri[2, 0], py - tri[2, 1]], -1)
    uv = rhs @ np.linalg.inv(m).T
    inside = (uv[..., 0] >= 0) & (uv[..., 1] >= 0) & (uv.sum(-1) <= 1)
    assert 0 < inside.sum() < H * W
    np.testing.assert_array_equal(rast[..., 3] > 0, inside)
    np.testing.assert_allclose(rast[inside][:, :2], uv[inside], atol=1e-5)
    np.testing.assert_allclose(rast[inside][:, 2], 0.25, atol=1e-6)
    assert (rast[inside][:, 3] == 1).all() and (rast[~inside] == 0).all()
    # Row 0 is clip y = −1: the triangle's lowest vertex (y = −0.9) covers pixels in the first rows.
    assert rast[:3, ..., 3].any() and not rast[-2:, ..., 3].any()


def test_barycentrics_are_perspective_correct():
    """A 3D triangle seen in perspective: the interpolated 3D point must lie on each pixel's own ray."""
    cam = orbit_cameras(1, 20.0, 2.0, 50.0)
    positions = torch.tensor([[-0.6, -0.2, -0.4], [0.7, 0.5, -0.1], [-0.1, 0.1, 0.8]])
    faces = torch.tensor([[0, 1, 2]])
    raster = TorchRasterizer()
    clip = clip_positions(positions, cam)
    rast = raster.rasterize(clip, faces, (H, W))
    points = raster.interpolate(positions, rast, faces)[0]
    covered = rast[0, ..., 3] > 0
    assert covered.sum() > 10
    reproj = torch.einsum("ij,hwj->hwi", cam.mvp(0.1, 10.0)[0], torch.nn.functional.pad(points, (0, 1), value=1.0))
    ndc = reproj[..., :2] / reproj[..., 3:]
    px, py = pixel_centres_ndc(H, W)
    expected = torch.from_numpy(np.stack([px, py], -1)).float()
    assert torch.allclose(ndc[covered], expected[covered], atol=1e-4)
    # Screen-space (affine) weights, which a rasterizer without the 1/w correction would use, land elsewhere:
    # the check above can tell the two apart.
    u, v = rast[0, ..., 0], rast[0, ..., 1]
    q = torch.stack([u, v, 1 - u - v], -1) * clip[0, :, 3]
    q = q / q.sum(-1, keepdim=True)
    wrong = torch.einsum("hwk,kj->hwj", q, positions)
    assert (wrong - points)[covered].abs().max() > 1e-3


def test_nearest_triangle_wins_in_either_order():
    near = [[-0.9, -0.9, -0.5, 1.0], [0.9, -0.9, -0.5, 1.0], [0.0, 0.9, -0.5, 1.0]]
    far = [[-0.9, 0.9, 0.5, 1.0], [0.9, 0.9, 0.5, 1.0], [0.0, -0.9, 0.5, 1.0]]
    for order in ((near, far), (far, near)):
        clip = torch.tensor(order[0] + order[1])[None]
        faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
        rast = TorchRasterizer().rasterize(clip, faces, (H, W))[0]
        both = rast[..., 3] > 0
        near_id = 1 if order[0] is near else 2
        centre = rast[H // 2, W // 2]
        assert centre[3] == near_id and centre[2] == pytest.approx(-0.5)
        assert (rast[both][:, 2] <= 0.5).all()


def test_interpolate_gradients_reach_attributes_and_positions():
    clip = torch.tensor([[[-0.8, -0.9, 0.0, 1.0], [0.7, -0.2, 0.0, 1.0], [-0.3, 0.6, 0.0, 1.0]]], requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], requires_grad=True)
    raster = TorchRasterizer()
    rast = raster.rasterize(clip, faces, (H, W))
    out = raster.interpolate(colours, rast, faces)
    out[..., 0].sum().backward()
    # d(sum of red)/d(colour of vertex 0) = sum over covered pixels of u; the other channels get nothing.
    covered = rast[0, ..., 3] > 0
    assert colours.grad[0, 0] == pytest.approx(rast[0, ..., 0][covered].sum().item(), rel=1e-5)
    assert colours.grad[:, 1:].abs().sum() == 0
    assert clip.grad is not None and clip.grad[0, :, :2].abs().sum() > 0


def test_batched_attributes_and_empty_pixels():
    clip = torch.tensor([[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]])
    clips = torch.stack([clip, clip + torch.tensor([0.3, 0.0, 0.0, 0.0])])
    faces = torch.tensor([[0, 1, 2]])
    raster = TorchRasterizer()
    rast = raster.rasterize(clips, faces, (H, W))
    attr = torch.stack([torch.ones(3, 1), 2 * torch.ones(3, 1)])
    out = raster.interpolate(attr, rast, faces)
    for b, value in enumerate((1.0, 2.0)):
        covered = rast[b, ..., 3] > 0
        assert torch.allclose(out[b][covered], torch.tensor(value)) and (out[b][~covered] == 0).all()
    assert not torch.equal(rast[0], rast[1])


def sphere_mesh(res: int = 12):
    grid = TetGrid.build(res, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        dmtet.sdf.copy_((grid.vertices - torch.tensor([0.1, 0.0, -0.05])).norm(dim=-1) - 0.55)
    return dmtet.mesh().detach()


def test_small_chunks_give_the_same_image():
    mesh = sphere_mesh()
    cams = orbit_cameras(2, 15.0, 2.0, 50.0)
    clip = clip_positions(mesh.positions, cams)
    full = TorchRasterizer().rasterize(clip, mesh.faces, (32, 32))
    chunked = TorchRasterizer(max_fragments=200).rasterize(clip, mesh.faces, (32, 32))
    assert torch.equal(full, chunked)


def test_render_mesh_normal_map_faces_the_camera():
    mesh = sphere_mesh()
    cams = orbit_cameras(1, 0.0, 2.0, 50.0)  # azimuth 0: the camera on −Y looking toward +Y
    out = render_mesh(TorchRasterizer(), mesh.positions, mesh.faces, cams, 32, 32, background=(1.0, 1.0, 1.0))
    centre = out["normal"][0, :, 16, 16]
    assert centre[1] < -0.9  # the visible side's normal points back at the camera (−Y)
    assert out["opacity"][0, 0, 0, 0] == 0 and torch.allclose(out["rgb"][0, :, 0, 0], torch.ones(3))
    # Image rows go top-down: the top rows see normals pointing up (+Z).
    column = out["normal"][0, 2, :, 16][out["opacity"][0, 0, :, 16] > 0]
    assert column[0] > 0.5 and column[-1] < -0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or import_nvdiffrast() is None,
                    reason="needs CUDA and nvdiffrast (device run)")
@pytest.mark.parametrize("size", [(256, 256), (100, 60)])
def test_torch_and_nvdiffrast_agree(size):
    device = torch.device("cuda")
    mesh = sphere_mesh(24).to(device)
    cams = orbit_cameras(4, 25.0, 1.8, 50.0, device)
    clip = clip_positions(mesh.positions, cams, size[1] / size[0])
    colours = (mesh.positions + 1) / 2
    gpu = make_rasterizer(device)
    assert gpu.name == "nvdiffrast"
    cpu = TorchRasterizer()
    rast_g, rast_c = gpu.rasterize(clip, mesh.faces, size), cpu.rasterize(clip, mesh.faces, size)
    cov_g, cov_c = rast_g[..., 3] > 0, rast_c[..., 3] > 0
    assert (cov_g == cov_c).float().mean() > 0.99
    same = (rast_g[..., 3] == rast_c[..., 3]) & cov_g  # same triangle: away from edges between triangles
    assert same.float().sum() > 0.9 * cov_g.float().sum()
    col_g, col_c = gpu.interpolate(colours, rast_g, mesh.faces), cpu.interpolate(colours, rast_c, mesh.faces)
    assert (col_g - col_c)[same].abs().max() < 1e-3
    assert (rast_g[..., 2] - rast_c[..., 2])[same].abs().max() < 1e-4
