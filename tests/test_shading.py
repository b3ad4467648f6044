"""The volume and the mesh renderer light a surface with the same light (render/shading.LIGHT)."""
import torch

from prolific.config import make_config
from prolific.field.dmtet import DMTet, TetGrid
from prolific.field.nerf import NeRF
from prolific.render.cameras import orbit_cameras
from prolific.render.mesh import render_mesh
from prolific.render.raster import TorchRasterizer
from prolific.render.shading import LIGHT
from prolific.render.volume import render_nerf


def ball_mesh(radius: float):
    grid = TetGrid.build(24, 1.0)
    dmtet = DMTet(grid)
    with torch.no_grad():
        dmtet.sdf.copy_(grid.vertices.norm(dim=-1) - radius)
    return dmtet.mesh().detach()


def test_a_white_ball_lit_from_the_side_looks_the_same_in_both_renderers():
    torch.manual_seed(0)
    cfg = make_config("a ball", "test")
    nerf = NeRF(cfg.nerf, cfg.hash_grid).eval()  # its initial density blob: a ball of radius ~0.5
    camera = orbit_cameras(1, 0.0, 2.0, 50.0)  # front view: +X is the image's right
    light = torch.tensor([[1.0, 0.0, 0.0]])
    with torch.no_grad():
        volume = render_nerf(nerf, torch.zeros(3), camera, 32, 32, "textureless", samples_per_ray=96,
                             light_dir=light)["rgb"][0].mean(0)
        mesh = ball_mesh(0.45)
        surface = render_mesh(TorchRasterizer(), mesh.positions, mesh.faces, camera, 32, 32, shading="lambertian",
                              albedo_fn=lambda x: torch.ones_like(x), light_dir=light,
                              background=(0.0, 0.0, 0.0))["rgb"][0].mean(0)
    # Away from the light only the ambient term is left, in both (the mesh renderer's own 0.3 before issue 14);
    # facing it, most of ambient + diffuse.
    for image in (volume, surface):
        assert abs(float(image[16, 12:15].mean()) - LIGHT.ambient) < 0.02
        assert float(image[16, 17:].max()) > LIGHT.ambient + 0.5 * LIGHT.diffuse
