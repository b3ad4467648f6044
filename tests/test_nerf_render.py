import math

import pytest
import torch
import torch.nn.functional as F

from prolific.config import make_config
from prolific.field.nerf import Background, NeRF
from prolific.render.cameras import cameras_from_angles, orbit_cameras
from prolific.render.volume import OccupancyGrid, render_nerf


@pytest.fixture
def cfg():
    return make_config("a ball", "test").nerf


def _nerf(cfg, seed=0):
    torch.manual_seed(seed)
    return NeRF(cfg, make_config("a ball", "test").hash_grid), Background(cfg)


def _camera(elevation, azimuth, distance, fov):
    one = torch.ones(1)
    return cameras_from_angles(one * elevation, one * azimuth, one * distance, one * fov)


def _blob_edge_radius(lam=10.0, r=0.5):
    """Distance from the centre at which a ray's opacity through the blob alone is 0.5 (fine 1D quadrature)."""
    s = torch.linspace(-3, 3, 24001, dtype=torch.float64)

    def opacity(p):
        sigma = F.softplus(lam * (1 - torch.sqrt(p * p + s * s) / r))
        return 1 - math.exp(-float(torch.trapezoid(sigma, s)))

    lo, hi = 0.0, 1.5
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if opacity(mid) > 0.5 else (lo, mid)
    return lo


@pytest.mark.parametrize("elevation,azimuth", [(0.0, 0.0), (35.0, 120.0)])
def test_blob_init_renders_an_opaque_centred_disk_of_the_right_radius(cfg, elevation, azimuth):
    nerf, bg = _nerf(cfg)
    H = W = 48
    distance, fov = 2.0, 50.0
    cams = _camera(elevation, azimuth, distance, fov)
    with torch.no_grad():
        out = render_nerf(nerf.eval(), bg, cams, H, W, samples_per_ray=96)
    assert out["rgb"].shape == (1, 3, H, W) and out["opacity"].shape == out["depth"].shape == (1, 1, H, W)
    silhouette = out["opacity"][0, 0] > 0.5
    assert out["opacity"][0, 0, H // 2, W // 2] > 0.99  # opaque centre

    p = _blob_edge_radius()
    radius_px = math.tan(math.asin(p / distance)) / math.tan(math.radians(fov) / 2) * H / 2
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    disk = (xs - W / 2) ** 2 + (ys - H / 2) ** 2 < radius_px**2
    iou = (silhouette & disk).sum() / (silhouette | disk).sum()
    assert iou > 0.95, (float(iou), radius_px, int(silhouette.sum()))
    centroid = torch.stack([ys[silhouette].mean(), xs[silhouette].mean()])
    assert torch.allclose(centroid, torch.tensor([H / 2, W / 2]), atol=0.5)
    # Depth at the centre: the ray enters the blob's dense core before the origin.
    assert 1.3 < out["depth"][0, 0, H // 2, W // 2] < distance
    # Outside the object the background shows through (near white at init).
    assert out["rgb"][0, :, 0, 0].min() > 0.8


def test_scene_mode_blob_surrounds_the_camera(cfg):
    cfg.mode = "scene"
    nerf, _ = _nerf(cfg)
    sigma = nerf.density(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [0.0, 0.0, 3.0]]))
    # Empty around the origin, dense toward the outside (the scenery surrounds the camera).
    assert sigma[0] < 1e-3 and sigma[1] < 1e-2 and sigma[2] > 1.0 and sigma[0] < sigma[1] < sigma[2]


def test_normals_point_outward_and_shading_lights_the_side_facing_the_light(cfg):
    nerf, bg = _nerf(cfg)
    dirs = F.normalize(torch.randn(64, 3), dim=-1)
    n = nerf.normal(0.45 * dirs)
    assert torch.allclose(n.norm(dim=-1), torch.ones(64), atol=1e-4)
    assert (n * dirs).sum(-1).min() > 0.9
    cams = _camera(0.0, 0.0, 2.0, 50.0)
    with torch.no_grad():
        out = render_nerf(nerf.eval(), torch.ones(3), cams, 24, 24, "textureless", samples_per_ray=48,
                          light_dir=torch.tensor([1.0, 0.0, 0.0]))
    rgb = out["rgb"][0].mean(0)
    # Light from +X = image right (front camera): the right half of the ball is bright, the left dim.
    assert rgb[12, 16] > 0.7 and rgb[12, 7] < 0.3
    assert out["normal"].shape == (1, 3, 24, 24) and out["normal"][0, 0, 12, 17] > 0.5
    with torch.no_grad():
        albedo = render_nerf(nerf, torch.ones(3), cams, 24, 24, "albedo", samples_per_ray=48)
        lamb = render_nerf(nerf, torch.ones(3), cams, 24, 24, "lambertian", samples_per_ray=48)
    centre = (slice(None), slice(None), 12, 12)
    # Lambertian never brightens the albedo; lit from the camera the centre keeps most of it.
    assert torch.all(lamb["rgb"][centre] <= albedo["rgb"][centre] + 1e-5)
    assert torch.all(lamb["rgb"][centre] > 0.8 * albedo["rgb"][centre])


def test_occupancy_grid_skips_empty_space_without_changing_the_image(cfg):
    nerf, bg = _nerf(cfg)
    nerf.eval()
    grid = OccupancyGrid(16, cfg.bound, cfg.occupancy_threshold)
    grid.update(nerf.density)
    lin = torch.linspace(-0.97, 0.97, 5)
    corners = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    far = corners[corners.norm(dim=-1) > 1.2]
    assert not grid.lookup(far).any()
    assert grid.lookup(torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.1]])).all()
    assert 0.05 < grid.occupied_fraction < 0.5

    evaluated = []
    hook = nerf.encoding.register_forward_hook(lambda m, inp, out: evaluated.append(inp[0].shape[0]))
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0)
    with torch.no_grad():
        full = render_nerf(nerf, bg, cams, 32, 32, "albedo", samples_per_ray=64)
        skipped = render_nerf(nerf, bg, cams, 32, 32, "albedo", occupancy=grid, samples_per_ray=64)
    hook.remove()
    assert evaluated[1] < 0.7 * evaluated[0]  # rays that only cross empty cells cost no network call
    for key in ("rgb", "opacity"):
        assert (full[key] - skipped[key]).abs().max() < 0.01, key


def test_occupancy_grid_follows_the_density_as_it_moves(cfg):
    grid = OccupancyGrid(8, 1.0, threshold=0.01, decay=0.5)
    centre = torch.tensor([0.6, 0.6, 0.6])
    grid.update(lambda x: 10.0 * ((x - centre).norm(dim=-1) < 0.3).float())
    assert grid.lookup(centre[None]).all() and not grid.lookup(-centre[None]).any()
    for _ in range(12):  # the object moved: the old cells decay below the threshold and are freed
        grid.update(lambda x: 10.0 * ((x + centre).norm(dim=-1) < 0.3).float())
    assert grid.lookup(-centre[None]).all() and not grid.lookup(centre[None]).any()
    loaded = OccupancyGrid(8, 1.0)
    loaded.load_state_dict(grid.state_dict())
    assert torch.equal(loaded.occupied, grid.occupied)


@pytest.mark.parametrize("shading", ["albedo", "lambertian", "textureless"])
def test_photometric_gradient_reaches_hash_grid_mlp_and_background(cfg, shading):
    nerf, bg = _nerf(cfg)
    nerf.train()
    grid = OccupancyGrid(cfg.occupancy_res, cfg.bound)
    grid.update(nerf.density)
    cams = orbit_cameras(2, elevation_deg=10.0, distance=2.0, fov_deg=50.0)
    out = render_nerf(nerf, bg, cams, 16, 16, shading, occupancy=grid, samples_per_ray=cfg.samples_per_ray,
                      generator=torch.Generator().manual_seed(0))
    target = torch.zeros_like(out["rgb"])
    target[:, 0] = 1.0
    F.mse_loss(out["rgb"], target).backward()
    assert nerf.encoding.params.grad.abs().sum() > 0
    assert nerf.mlp[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bg.parameters())


def test_a_few_adam_steps_fit_a_coloured_target_on_cpu(cfg):
    nerf, bg = _nerf(cfg)
    nerf.train()
    params = [{"params": nerf.parameters(), "lr": 1e-2}, {"params": bg.parameters(), "lr": 1e-2}]
    opt = torch.optim.Adam(params)
    cams = orbit_cameras(4, elevation_deg=10.0, distance=2.0, fov_deg=50.0)
    gen = torch.Generator().manual_seed(0)
    target = torch.tensor([0.9, 0.1, 0.1])[None, :, None, None]  # a red ball

    def loss_now():
        out = render_nerf(nerf, bg, cams, 12, 12, samples_per_ray=16, generator=gen)
        return (((out["rgb"] - target) ** 2) * out["opacity"]).mean() / out["opacity"].mean()

    first = float(loss_now().detach())
    for _ in range(15):
        opt.zero_grad()
        loss = loss_now()
        loss.backward()
        opt.step()
    assert float(loss_now().detach()) < 0.3 * first


def test_rays_that_miss_the_box_show_only_background(cfg):
    nerf, _ = _nerf(cfg)
    cams = _camera(0.0, 0.0, 4.0, 120.0)  # wide view: the image corners look past the cube
    with torch.no_grad():
        out = render_nerf(nerf.eval(), torch.tensor([0.2, 0.4, 0.6]), cams, 16, 16, samples_per_ray=16)
    assert out["opacity"][0, 0, 0, 0] == 0
    assert torch.allclose(out["rgb"][0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    assert out["depth"][0, 0, 0, 0] == 0
    with pytest.raises(ValueError):
        render_nerf(nerf, None, cams, 4, 4, shading="glossy")


@pytest.mark.parametrize("shading", ["albedo", "lambertian"])
def test_large_renders_run_the_field_in_checkpointed_chunks_with_same_image_and_grads(cfg, shading, monkeypatch):
    # At 512² the field runs in checkpointed chunks so its activations fit on a GPU; the image and every
    # gradient must be those of the one-pass render.
    import prolific.render.volume as volume

    nerf, bg = _nerf(cfg)
    cams = orbit_cameras(2, elevation_deg=10.0, distance=2.0, fov_deg=50.0)

    def run():
        nerf.zero_grad(set_to_none=True)
        out = render_nerf(nerf, bg, cams, 12, 12, shading, samples_per_ray=cfg.samples_per_ray, jitter=False)
        (out["rgb"] * torch.linspace(0, 1, 12)).sum().backward()
        return out["rgb"].detach(), nerf.encoding.params.grad.clone(), nerf.mlp[0].weight.grad.clone()

    whole = run()
    calls = []
    monkeypatch.setattr(volume, "FIELD_CHUNK", 500)
    real_checkpoint = volume.checkpoint
    monkeypatch.setattr(volume, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    chunked = run()
    assert len(calls) > 1
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
