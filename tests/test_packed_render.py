"""The packed renderer (fixed-step marching through the occupancy grid) against the dense one, and what it costs."""
import importlib
import math

import pytest
import torch

from prolific.config import make_config
from prolific.field.hashgrid import TorchHashGrid
from prolific.field.nerf import Background, NeRF
from prolific.render.cameras import orbit_cameras
from prolific.render.march import march_rays, march_step
from prolific.render.packed import DenseRenderer, PackedRenderer, _prune, make_renderer, render_rays_packed
from prolific.render.volume import OccupancyGrid, render_rays
from prolific.stages.nerf import regularisers


@pytest.fixture
def cfg():
    return make_config("a ball", "test").nerf


GRID = make_config("a ball", "test").hash_grid


def _nerf(cfg, seed=0):
    torch.manual_seed(seed)
    nerf, bg = NeRF(cfg, GRID), Background(cfg)
    with torch.no_grad():  # a field with detail, so that every sample's value matters
        nerf.encoding.params.normal_(0.0, 0.5)
    return nerf, bg


def _parallel_rays(n=7, start=-3.0):
    """Rays along +y through the cube: every one crosses it over the same length 2·bound, so the dense
    renderer's samples_per_ray bins and the packed renderer's fixed step can be made to coincide."""
    g = torch.linspace(-0.8, 0.8, n)
    xs, zs = torch.meshgrid(g, g, indexing="ij")
    R = xs.numel()
    origins = torch.stack([xs.reshape(-1), torch.full((R,), start), zs.reshape(-1)], -1)
    dirs = torch.tensor([0.0, 1.0, 0.0]).expand(R, 3).contiguous()
    light = torch.tensor([0.3, -0.8, 0.5])
    return origins, dirs, torch.zeros(R, dtype=torch.long), (light / light.norm()).expand(R, 3)


@pytest.mark.parametrize("shading", ["albedo", "lambertian"])
def test_packed_equals_dense_on_the_same_samples_with_the_same_gradients(cfg, shading):
    nerf, bg = _nerf(cfg)
    origins, dirs, batch, light = _parallel_rays()
    S = 24
    outs, grads = [], []
    for packed in (False, True):
        nerf.zero_grad(set_to_none=True)
        bg.zero_grad(set_to_none=True)
        if packed:
            out = render_rays_packed(nerf, bg, origins, dirs, batch, light, shading, step=2 * nerf.bound / S,
                                     jitter=False)
        else:
            out = render_rays(nerf, bg, origins, dirs, batch, light, shading, samples_per_ray=S, jitter=False)
        loss = (out["rgb"] * torch.tensor([0.3, -1.0, 2.0])).sum() + out["opacity"].sum() + out["depth"].sum()
        if shading != "albedo":
            loss = loss + (out["normal"] ** 2).sum()
        # The regularisers read weights where sampled: the entropy term sees the same per-sample weights.
        loss = loss + regularisers([{**out, "opacity": out["opacity"][None]}],
                                   make_config("x", "test", {"nerf": {"entropy_weight": 1.0}}).nerf, 0)
        loss.backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in (nerf.encoding.params, nerf.mlp[0].weight, bg.mlp[-1].bias)])
    dense, packed = outs
    assert dense["n_samples"] == packed["n_samples"] == S * len(origins)
    for key in ("rgb", "opacity", "depth") + (("normal",) if shading != "albedo" else ()):
        torch.testing.assert_close(packed[key], dense[key], rtol=1e-5, atol=1e-5)
    assert packed["opacity"].max() > 0.5 and packed["opacity"].min() < 0.5  # some rays hit, some miss
    torch.testing.assert_close(packed["weights"].sort().values, dense["weights"][dense["sampled"]].sort().values,
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6 * float(a.abs().max()))


def _ball_grid(cfg, radius):
    grid = OccupancyGrid(cfg.occupancy_res, cfg.bound)
    grid.update(lambda x: 10.0 * (x.norm(dim=-1) < radius).float())
    return grid


def test_cost_follows_the_occupied_cells_not_rays_times_steps(cfg):
    nerf, bg = _nerf(cfg)
    origins, dirs, batch, light = _parallel_rays(n=16)
    step = march_step(cfg.bound, 256)
    empty = OccupancyGrid(cfg.occupancy_res, cfg.bound)
    empty.update(lambda x: torch.zeros(x.shape[0]))
    evaluated = []
    hook = nerf.encoding.register_forward_hook(lambda m, inp, out: evaluated.append(inp[0].shape[0]))
    with torch.no_grad():
        none = render_rays_packed(nerf, torch.ones(3), origins, dirs, batch, light, occupancy=empty, step=step)
        small = render_rays_packed(nerf, bg, origins, dirs, batch, light, occupancy=_ball_grid(cfg, 0.3), step=step)
        big = render_rays_packed(nerf, bg, origins, dirs, batch, light, occupancy=_ball_grid(cfg, 0.6), step=step)
    hook.remove()
    assert none["n_samples"] == 0 and none["opacity"].max() == 0 and torch.equal(none["rgb"], torch.ones(256, 3))
    assert evaluated == [0, small["n_samples"], big["n_samples"]]  # only the packed samples reach the field
    # Samples ≈ the rays' chords through the occupied cells over the step (the cells pad the ball by < 1 cell).
    cell = 2 * cfg.bound / cfg.occupancy_res
    for out, radius in ((small, 0.3), (big, 0.6)):
        p = origins[:, [0, 2]].norm(dim=-1)
        lo = (2 * (radius ** 2 - p ** 2).clamp_min(0).sqrt()).sum() / step
        hi = (2 * ((radius + math.sqrt(3) * cell) ** 2 - p ** 2).clamp_min(0).sqrt()).sum() / step
        assert lo <= out["n_samples"] <= hi, (float(lo), out["n_samples"], float(hi))


def test_march_puts_samples_on_a_fixed_lattice_inside_occupied_cells(cfg):
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0)
    origins, dirs = (v.reshape(-1, 3) for v in cams.rays(12, 12))
    grid = _ball_grid(cfg, 0.5)
    step = march_step(cfg.bound, 128)
    for jitter in (False, True):
        s = march_rays(origins, dirs, cfg.bound, step, grid, jitter=jitter, generator=torch.Generator().manual_seed(0))
        assert len(s) > 0 and torch.equal(s.offsets[1:] - s.offsets[:-1], torch.bincount(s.ray, minlength=288))
        assert grid.lookup(origins[s.ray] + s.t[:, None] * dirs[s.ray]).all()
        same_ray = s.ray[1:] == s.ray[:-1]
        gaps = (s.t[1:] - s.t[:-1])[same_ray] / step  # whole steps apart (more where empty cells were skipped)
        assert (gaps > 0.99).all() and ((gaps - gaps.round()).abs() < 1e-3).all()
        assert torch.all(s.dt == step)


def test_early_termination_drops_the_samples_behind_an_opaque_surface(cfg):
    nerf, bg = _nerf(cfg)
    with torch.no_grad():
        nerf.mlp[-1].bias[0] = 30.0  # dense: rays become opaque soon after entering the ball
    nerf.eval()
    grid = _ball_grid(cfg, 0.6)
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0)
    step = march_step(cfg.bound, 256)
    with torch.no_grad():
        full = PackedRenderer(step, 0.0)(nerf, bg, cams, 16, 16, occupancy=grid)
        early = PackedRenderer(step, 1e-4)(nerf, bg, cams, 16, 16, occupancy=grid)
    assert early["n_samples"] < 0.6 * full["n_samples"]
    for key in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(early[key], full[key], rtol=0, atol=2e-3)


def test_density_rounds_stop_at_opaque_rays_and_keep_the_samples_of_one_pass(cfg):
    nerf, _ = _nerf(cfg)
    with torch.no_grad():
        nerf.mlp[-1].bias[0] = 100.0  # opaque within ~7 steps of entering the ball
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0)
    origins, dirs = (v.reshape(-1, 3) for v in cams.rays(16, 16))
    samples = march_rays(origins, dirs, cfg.bound, march_step(cfg.bound, 256), _ball_grid(cfg, 0.6))
    evaluated = []
    hook = nerf.encoding.register_forward_hook(lambda m, inp, out: evaluated.append(inp[0].shape[0]))
    rounds, _ = _prune(nerf, samples, origins, dirs, 1e-4, 0.01, first_round=8)
    in_rounds, evaluated[:] = sum(evaluated), []
    one_pass, _ = _prune(nerf, samples, origins, dirs, 1e-4, 0.01, first_round=len(samples))
    hook.remove()
    assert sum(evaluated) == len(samples) and in_rounds < 0.5 * len(samples)
    assert 0 < len(rounds) < 0.5 * len(samples)
    for key in ("ray", "t", "dt", "offsets"):
        assert torch.equal(getattr(rounds, key), getattr(one_pass, key))


def test_the_renderer_is_chosen_from_the_config(cfg):
    assert isinstance(make_renderer(cfg), PackedRenderer)
    dense = make_renderer(make_config("x", "test", {"nerf": {"renderer": "dense"}}).nerf)
    assert isinstance(dense, DenseRenderer) and dense.samples_per_ray == cfg.samples_per_ray
    packed = make_renderer(make_config("x", "test", {"nerf": {"march_steps": 100, "early_stop": 0.0}}).nerf)
    assert packed.step == pytest.approx(2 * math.sqrt(3) * cfg.bound / 100) and packed.early_stop == 0.0
    from prolific.errors import BadRequest
    with pytest.raises(BadRequest, match="nerf.renderer"):
        make_config("x", "test", {"nerf": {"renderer": "fast"}})


def test_mlp_precision_is_fp32_on_a_cpu_whatever_the_setting(cfg):
    half = make_config("a ball", "test", {"nerf": {"mlp_precision": "bf16"}}).nerf
    (plain, _), (asked, _) = _nerf(cfg), _nerf(half)
    x = torch.rand(64, 3) - 0.5
    assert asked.mlp_dtype is None and torch.equal(asked(x)[0], plain(x)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_mlp_keeps_fp32_outputs_and_exact_normals(precision):
    job = make_config("a ball", "test", {"hash_grid": {"impl": "torch"}})
    torch.manual_seed(0)
    full = NeRF(job.nerf, job.hash_grid, device="cuda")
    half = NeRF(make_config("a ball", "test", {"nerf": {"mlp_precision": precision}}).nerf, job.hash_grid,
                device="cuda")
    half.load_state_dict(full.state_dict())
    x = torch.rand(4096, 3, device="cuda") - 0.5
    (s_full, a_full, n_full), (s_half, a_half, n_half) = full(x, with_normal=True), half(x, with_normal=True)
    assert s_half.dtype == a_half.dtype == torch.float32
    torch.testing.assert_close(n_half, n_full)  # normals run the MLP in fp32
    sigma, albedo = half(x)
    assert sigma.dtype == albedo.dtype == torch.float32
    assert float((sigma - s_full).abs().max() / s_full.abs().max()) < 2e-2
    assert float((albedo - a_full).abs().max()) < 2e-2  # albedo is a sigmoid in [0, 1]


class _CountingGrid(TorchHashGrid):
    """The PyTorch grid, counting the points whose corners it computes (forward and backward)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.computed = 0

    def corners(self, x, with_dx=False):
        self.computed += x.shape[0]
        return super().corners(x, with_dx)


def _render_and_grads(nerf, bg, replay):
    """A training render (albedo, early termination and alpha pruning) + backward, and the points the grid
    computed."""
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0)
    renderer = PackedRenderer(march_step(nerf.bound, 128), 1e-4, 0.01, replay=replay)
    nerf.zero_grad(set_to_none=True)
    nerf.encoding.computed = 0
    out = renderer(nerf, bg, cams, 12, 12, occupancy=_ball_grid(make_config("x", "test").nerf, 0.7),
                   jitter=False)
    (out["rgb"] * torch.tensor([0.3, -1.0, 2.0])[:, None, None]).sum().backward()
    grads = [p.grad.clone() for p in (nerf.encoding.params, nerf.mlp[0].weight, nerf.mlp[-1].bias)]
    return out, grads, nerf.encoding.computed


def test_the_pass_with_gradients_replays_the_density_pass_and_changes_nothing(cfg):
    nerf, bg = _nerf(cfg)
    counting = _CountingGrid(GRID.hash_levels, GRID.hash_features, GRID.hash_log2_size, GRID.hash_base_res,
                             GRID.hash_max_res)
    counting.load_state_dict(nerf.encoding.state_dict())
    nerf.encoding = counting
    nerf.train()
    plain, plain_grads, plain_computed = _render_and_grads(nerf, bg, replay=False)
    replayed, grads, computed = _render_and_grads(nerf, bg, replay=True)
    kept = replayed["n_samples"]
    assert 0 < kept == plain["n_samples"]
    # Both: the density pass, then the backward at the kept samples; without replay also their forward.
    assert plain_computed - computed == kept
    for key in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(replayed[key], plain[key], rtol=0, atol=1e-6)
    for a, b in zip(plain_grads, grads):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def test_lambertian_renders_do_not_replay(cfg):
    """Normals need the field at points the density pass never visited: the field runs as before."""
    nerf, bg = _nerf(cfg)
    calls = []
    hook = nerf.encoding.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs.get("replay") is not None), with_kwargs=True)
    cams = orbit_cameras(1, elevation_deg=20.0, distance=1.8, fov_deg=60.0)
    out = PackedRenderer(march_step(nerf.bound, 128), 1e-4, 0.01)(nerf, bg, cams, 8, 8, shading="lambertian",
                                                                    occupancy=_ball_grid(cfg, 0.7))
    hook.remove()
    assert out["n_samples"] > 0 and calls and not any(calls)


def test_the_occupancy_grid_tests_sigma_times_the_march_step(cfg):
    """Judged on σ·Δt as nerfacc does, the grid frees the cells whose samples the alpha threshold would drop
    anyway: the density pass visits fewer samples and the render keeps the same ones."""
    nerf, bg = _nerf(cfg)
    with torch.no_grad():
        nerf.encoding.params.zero_()  # the bare density blob: dense inside r = 0.5, a thin tail outside
    step = march_step(cfg.bound, 256)
    on_sigma = OccupancyGrid(32, cfg.bound, 0.01)
    on_alpha = OccupancyGrid(32, cfg.bound, 0.01, step=step)
    for grid in (on_sigma, on_alpha):
        grid.update(nerf.density)
    assert on_alpha.occupied_fraction < 0.8 * on_sigma.occupied_fraction
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0)
    origins, dirs = (v.reshape(-1, 3) for v in cams.rays(16, 16))
    marched, kept = [], []
    for grid in (on_sigma, on_alpha):
        samples = march_rays(origins, dirs, cfg.bound, step, grid)
        marched.append(len(samples))
        kept.append(_prune(nerf, samples, origins, dirs, 1e-4, 0.01)[0])
    assert marched[1] < 0.8 * marched[0]
    for key in ("ray", "t"):
        assert torch.equal(getattr(kept[0], key), getattr(kept[1], key))


# The replayed values split over the field pass's checkpointed chunks, or held density chunk by density chunk.
@pytest.mark.parametrize("module, chunk, size", [("volume", "FIELD_CHUNK", 50), ("packed", "_DENSITY_CHUNK", 37)])
def test_replayed_values_in_chunks_give_the_one_chunk_render(cfg, monkeypatch, module, chunk, size):
    nerf, bg = _nerf(cfg)
    nerf.train()
    whole, whole_grads, _ = _render_and_grads(nerf, bg, replay=True)
    monkeypatch.setattr(importlib.import_module(f"prolific.render.{module}"), chunk, size)
    chunked, grads, _ = _render_and_grads(nerf, bg, replay=True)
    assert whole["n_samples"] > 150  # several chunks
    torch.testing.assert_close(chunked["rgb"], whole["rgb"], rtol=0, atol=1e-6)
    for a, b in zip(whole_grads, grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
