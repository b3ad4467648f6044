"""The Triton kernels against their PyTorch twins. Not collected on its own: tests/test_kernels.py runs this
file in a subprocess, under Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, which triton reads when a
kernel is decorated, i.e. when kernels/*.py is imported, so it cannot be switched on inside a running test
session without leaking into every other test) and, on a CUDA machine, compiled on the GPU."""
import dataclasses

import pytest
import torch

from kernel_device import DEVICE, INTERPRETED, require_kernels

require_kernels()

from prolific.bench.hashgrid import bench_points  # noqa: E402
from prolific.config import make_config  # noqa: E402
from prolific.field.hashgrid import TorchHashGrid, TritonHashGrid  # noqa: E402
from prolific.field.mlp import TritonMLP  # noqa: E402
from prolific.field.nerf import Background, NeRF  # noqa: E402
from prolific.kernels.composite import composite as composite_triton  # noqa: E402
from prolific.kernels.march import walk_lattice as walk_triton  # noqa: E402
from prolific.render.cameras import orbit_cameras  # noqa: E402
from prolific.render.composite import composite as composite_torch  # noqa: E402
from prolific.render.march import march_rays, march_step, offsets_of  # noqa: E402
from prolific.render.packed import PackedRenderer  # noqa: E402
from prolific.render.volume import OccupancyGrid  # noqa: E402

N_POINTS = 300 if INTERPRETED else 200_000
# (levels, features, log2 table, base res, max res): dense and hashed levels, 1-4 features; the GPU also runs
# the standard preset's grid.
GRIDS = [(4, 2, 12, 4, 64), (3, 1, 10, 4, 32), (2, 4, 8, 2, 16)] + ([] if INTERPRETED else [(16, 2, 19, 16, 2048)])


def _tolerance(args, interpreted_tol: float) -> float:
    """Relative tolerance against TorchHashGrid. Interpreted, the kernels do PyTorch's float operations in its
    order. Compiled, the cell fraction res·x − ⌊res·x⌋ is one fused multiply-add (the exact product, where
    PyTorch rounds res·x first): it moves by up to res·2^-24 of a cell, 1.2e-4 at the finest level of 2048."""
    return interpreted_tol if INTERPRETED else max(interpreted_tol, 2 * args[4] * 2.0 ** -24)


def _pair(args, seed=0):
    torch.manual_seed(seed)
    ref = TorchHashGrid(*args).to(DEVICE)
    with torch.no_grad():
        ref.params.normal_()  # features of order 1, so that every corner's row and weight shows in the output
    fused = TritonHashGrid(*args).to(DEVICE)
    fused.load_state_dict(ref.state_dict())  # the same checkpoint loads in either
    return ref, fused


def _points(n, layout="uniform"):
    """Points in [0,1]^3 laid out as `prolific bench hashgrid --layout` lays them (uniform, or `rays`: ray by ray
    in march steps, as a render's samples come, so runs of consecutive points share a coarse cell and the
    backward merges them), with the cube's faces and corners."""
    x = bench_points(n, layout, torch.Generator().manual_seed(1), torch.device("cpu"))
    x[0], x[1], x[2] = 0.0, 1.0, torch.tensor([1.0, 0.0, 0.5])
    return x.to(DEVICE)


@pytest.mark.parametrize("args", GRIDS)
def test_hashgrid_forward_matches_torch(args):
    ref, fused = _pair(args)
    assert fused.n_dense >= 1 and (fused.n_dense < fused.n_levels or args[2] <= 10)
    x = _points(N_POINTS)
    with torch.no_grad():
        a, b = ref(x), fused(x)
    assert b.dtype == torch.float32 and b.shape == a.shape
    assert fused(x[:0]).shape == (0, fused.out_dim)
    assert float((a - b).abs().max() / a.abs().max()) <= _tolerance(args, 1e-5)


@pytest.mark.parametrize("args", GRIDS)
@pytest.mark.parametrize("with_points", [False, True])
@pytest.mark.parametrize("layout", ["uniform", "rays"])
def test_hashgrid_gradients_match_torch(args, with_points, layout):
    ref, fused = _pair(args)
    x = _points(N_POINTS, layout)
    if layout == "rays":  # most consecutive points share a coarsest cell: the backward's merged sums run
        cells = (x * fused.resolutions[0]).floor()
        assert float((cells[1:] == cells[:-1]).all(1).float().mean()) > 0.5
    g = torch.randn(N_POINTS, ref.out_dim, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    grads = []
    for grid in (ref, fused):
        xi = x.clone().requires_grad_(with_points)
        (grid(xi) * g).sum().backward()
        grads.append((grid.params.grad, xi.grad))
    (pa, xa), (pb, xb) = grads
    # Tolerances: fp32 sums of the same terms in another order (atomics on both sides on a GPU, where a coarse
    # cell's entry sums ~300 of the 200k points' terms: ~300·2^-24 ≈ 2e-5 of it), scaled by the largest entry;
    # the points' gradient multiplies by the level resolution (up to max_res) before summing 8·levels terms.
    assert float((pa - pb).abs().max() / pa.abs().max()) <= _tolerance(args, 1e-5 if INTERPRETED else 1e-4)
    if with_points:
        assert float((xa - xb).abs().max() / xa.abs().max()) <= _tolerance(args, 1e-4)
    else:
        assert xb is None


def _table_gradient_error(args, layout, **settings) -> float:
    """Largest difference of the table's gradient between the torch grid and a TritonHashGrid with `settings`,
    over the largest entry."""
    ref, _ = _pair(args)
    fused = TritonHashGrid(*args, **settings).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = _points(N_POINTS, layout)
    g = torch.randn(N_POINTS, ref.out_dim, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    grads = []
    for grid in (ref, fused):
        (grid(x) * g).sum().backward()
        grads.append(grid.params.grad)
    return float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())


@pytest.mark.parametrize("merge_max_res", [0, 16, 10_000])
def test_the_backward_merges_runs_on_the_levels_asked_for_and_changes_nothing(merge_max_res):
    """The table's gradient is the same whether no level, the coarsest ones or all of them merge runs of points
    in one cell before their atomic adds."""
    error = _table_gradient_error(GRIDS[0], "rays", merge_max_res=merge_max_res)
    assert error <= _tolerance(GRIDS[0], 1e-5 if INTERPRETED else 1e-4)


@pytest.mark.parametrize("args", GRIDS)
@pytest.mark.parametrize("layout", ["uniform", "rays"])
def test_the_backward_adding_pairs_of_rows_at_once_changes_nothing(args, layout):
    """With pair_rows a cell's x_lo and x_hi rows that are an aligned pair get one 16-byte atomic add (on sm_90;
    ordered the same way everywhere): the table's gradient is the one without, merged runs or not."""
    error = _table_gradient_error(args, layout, pair_rows=True)
    assert error <= _tolerance(args, 1e-5 if INTERPRETED else 1e-4)


def _segments(counts):
    counts = torch.tensor(counts)
    ray = torch.repeat_interleave(torch.arange(len(counts)), counts).to(DEVICE)
    return ray, offsets_of(ray, len(counts))


@pytest.mark.parametrize("channels", [4, 7])
def test_composite_matches_the_segment_op_twin(channels):
    # Rays without samples, with one, and longer than the kernel's block.
    ray, offsets = _segments([0, 3, 70, 1, 0, 130, 5] * (1 if INTERPRETED else 500))
    n, R = len(ray), len(offsets) - 1
    gen = torch.Generator().manual_seed(0)
    sigma_dt = (torch.rand(n, generator=gen) * 0.3).to(DEVICE)
    features = torch.randn(n, channels, generator=gen).to(DEVICE)
    g = [torch.randn(n, generator=gen).to(DEVICE), torch.randn(R, channels, generator=gen).to(DEVICE),
         torch.randn(R, generator=gen).to(DEVICE)]
    results = []
    for fn in (composite_torch, composite_triton):
        sd, f = sigma_dt.clone().requires_grad_(), features.clone().requires_grad_()
        outs = fn(sd, f, ray, offsets)
        sum((o * go).sum() for o, go in zip(outs, g)).backward()
        results.append([*outs, sd.grad, f.grad])
    assert results[0][2].max() > 0.9  # some rays turn opaque
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_grid", [True, False])
def test_lattice_walk_matches_the_pytorch_twin(with_grid):
    cams = orbit_cameras(3, elevation_deg=25.0, distance=2.0, fov_deg=50.0).to(DEVICE)
    side = 12 if INTERPRETED else 256
    origins, dirs = (v.reshape(-1, 3).contiguous() for v in cams.rays(side, side))
    grid = None
    if with_grid:  # scattered occupied cells: many entries and exits per ray
        grid = OccupancyGrid(16, 1.0).to(DEVICE)
        grid.occupied.copy_((torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(3)) < 0.3).to(DEVICE))
    step = march_step(1.0, 64 if INTERPRETED else 512)
    for jitter in (False, True):
        a, b = (march_rays(origins, dirs, 1.0, step, grid, jitter, torch.Generator(DEVICE).manual_seed(0), walk)
                for walk in (None, walk_triton))
        assert len(a) > 0 and b.ray.dtype == a.ray.dtype and b.t.dtype == a.t.dtype
        if INTERPRETED:  # the same float operations in the same order: the same samples
            assert torch.equal(a.offsets, b.offsets) and torch.equal(a.ray, b.ray) and torch.equal(a.t, b.t)
            continue
        # Compiled, a fused multiply-add may put a point that lies on a cell face on the other side: allow a
        # few rays in ten thousand a different count, and compare the samples of all the others.
        counts_a, counts_b = a.offsets.diff(), b.offsets.diff()
        same = counts_a == counts_b
        assert float((~same).float().mean()) <= 2e-4
        keep_a, keep_b = same[a.ray], same[b.ray]
        assert torch.equal(a.ray[keep_a], b.ray[keep_b])
        torch.testing.assert_close(b.t[keep_b], a.t[keep_a], rtol=0, atol=1e-5)
    miss = march_rays(origins + 10.0, dirs.abs(), 1.0, step, grid, walk=walk_triton)  # every ray misses the cube
    assert len(miss) == 0 and torch.equal(miss.offsets, torch.zeros_like(miss.offsets))


def test_packed_render_with_the_kernels_matches_plain_pytorch():
    job = make_config("a ball", "test")
    cfg = job.nerf
    torch.manual_seed(0)
    nerf, bg = NeRF(cfg, job.hash_grid).to(DEVICE), Background(cfg).to(DEVICE)
    grid = OccupancyGrid(cfg.occupancy_res, cfg.bound).to(DEVICE)
    grid.update(nerf.density)
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0).to(DEVICE)
    step = march_step(cfg.bound, 128)
    fused_nerf = nerf
    if not INTERPRETED:  # the whole fast path on the GPU: Triton hash grid as well (the MLP in fp32 in both)
        fused_nerf = NeRF(dataclasses.replace(cfg, mlp_precision="fp32"), job.hash_grid, device=DEVICE)
        fused_nerf.load_state_dict(nerf.state_dict())
        assert fused_nerf.encoding.impl == "triton"
    results = []
    for field, renderer in ((nerf, PackedRenderer(step)),
                            (fused_nerf, PackedRenderer(step, composite=composite_triton, walk=walk_triton))):
        field.zero_grad(set_to_none=True)
        out = renderer(field, bg, cams, 10, 10, shading="lambertian", occupancy=grid, jitter=False)
        (out["rgb"].sum() + out["depth"].sum() + out["normal"].sum()).backward()
        # depth · opacity: the composited distance (depth divides it by opacity, which magnifies rounding where
        # a ray barely hits anything)
        results.append([out["rgb"], out["opacity"], out["depth"] * out["opacity"], out["normal"],
                        field.encoding.params.grad.clone()])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args", GRIDS[:1] + GRIDS[-1:])
def test_level_major_features_into_the_fused_mlp_change_nothing(args):
    """encode(grid, mlp): the Triton grid hands its features to the fused MLP level-major, with no transposition
    either way. The outputs and the points' gradient are those of the transposed handoff, mlp(grid(x)), exactly;
    the table's too, up to the order of its atomic adds on a GPU. (Each side against PyTorch: the cases above and
    kernel_cases_mlp.py.)"""
    from prolific.field.mlp import TritonMLP, encode, make_mlp

    _, grid = _pair(args)
    torch.manual_seed(1)
    mlp = TritonMLP(*make_mlp(grid.out_dim, 64, 4, 2, device=DEVICE))
    x = _points(N_POINTS, "rays")
    assert grid(x, level_major=True).shape == (grid.n_levels, N_POINTS, grid.n_features)
    g = torch.randn(N_POINTS, 4, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    outs = []
    for run in (lambda xi: mlp(grid(xi)), lambda xi: encode(grid, mlp, xi)):
        xi = x.clone().requires_grad_()
        y = run(xi)
        (y * g).sum().backward()
        outs.append((y.detach(), grid.params.grad.clone(), xi.grad))
        grid.zero_grad(set_to_none=True)
    (ya, pa, xa), (yb, pb, xb) = outs
    assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert float((pa - pb).abs().max() / pa.abs().max()) <= (0.0 if INTERPRETED else 1e-4)  # as above


def _fused_nerf(job):
    """The stage-1 NeRF on the fast path: the Triton grid and the fused MLP (built so on a GPU; under the
    interpreter the same modules are put on the CPU field)."""
    cfg = dataclasses.replace(job.nerf, mlp_precision="fp32")
    if not INTERPRETED:
        nerf = NeRF(cfg, job.hash_grid, device=DEVICE)
        assert nerf.encoding.impl == "triton" and isinstance(nerf.mlp, TritonMLP)
        return nerf
    nerf = NeRF(cfg, job.hash_grid)
    g = job.hash_grid
    grid = TritonHashGrid(g.hash_levels, g.hash_features, g.hash_log2_size, g.hash_base_res, g.hash_max_res)
    grid.load_state_dict(nerf.encoding.state_dict())
    nerf.encoding, nerf.mlp = grid, TritonMLP(*nerf.mlp)
    return nerf


def test_replaying_the_density_pass_on_the_kernels_changes_nothing():
    """The Triton grid's level-major features and the fused MLP's outputs from the density pass, handed back by
    the pass with gradients: the same render and gradients as computing that pass again."""
    job = make_config("a ball", "test")
    torch.manual_seed(0)
    nerf, bg = _fused_nerf(job), Background(job.nerf).to(DEVICE)
    with torch.no_grad():
        nerf.encoding.params.normal_(0.0, 0.5)
    grid = OccupancyGrid(16, 1.0).to(DEVICE)
    grid.update(nerf.density)
    cams = orbit_cameras(2, elevation_deg=20.0, distance=1.8, fov_deg=60.0).to(DEVICE)
    side = 10 if INTERPRETED else 128
    results = []
    for replay in (False, True):
        renderer = PackedRenderer(march_step(1.0, 96), 1e-4, 0.01, composite_triton, walk_triton, replay=replay)
        nerf.zero_grad(set_to_none=True)
        out = renderer(nerf, bg, cams, side, side, occupancy=grid, jitter=False)
        (out["rgb"] * torch.tensor([0.3, -1.0, 2.0], device=DEVICE)[:, None, None]).sum().backward()
        results.append([out["rgb"], out["opacity"], nerf.encoding.params.grad.clone(), nerf.mlp[0].weight.grad,
                        nerf.mlp[-1].bias.grad])
        assert out["n_samples"] > 0
    for a, b in zip(*results):
        assert a.abs().max() > 0
        # The same values in the same order, to an ulp: the interpreter's tl.dot is NumPy's matmul, whose BLAS
        # may round a row differently as its block holds other rows (seen on a 2-core CPU: 1 of 600 values, 6e-8
        # apart); on a GPU the table's atomic adds may land in another order. A wrong replay is off by O(1).
        torch.testing.assert_close(b, a, rtol=1e-6 if INTERPRETED else 1e-5, atol=1e-7 if INTERPRETED else 1e-6)
