import pytest
import torch

from prolific.field.hashgrid import TorchHashGrid, make_hash_encoding, tcnn_available


def _grid(**kw):
    torch.manual_seed(0)
    args = dict(n_levels=4, n_features=2, log2_size=12, base_res=4, max_res=64)
    args.update(kw)
    return TorchHashGrid(**args)


def test_shape_dtype_init_and_cpu_choice():
    enc = make_hash_encoding(4, 2, 12, 4, 64, device="cpu")
    assert enc.impl == "torch" and enc.out_dim == 8
    out = enc(torch.rand(100, 3))
    assert out.shape == (100, 8) and out.dtype == torch.float32
    assert enc.params.dtype == torch.float32 and enc.params.abs().max() <= 1e-4
    assert enc.resolutions[0] == 4 and enc.resolutions[-1] == 64
    # Levels with (res+1)^3 <= 4096 vertices are dense, the finest one hashes into 4096 rows.
    assert enc._dense.tolist() == [True, True, False, False]
    assert enc.params.shape[0] == 5**3 + 11**3 + 2 * 4096


def test_dense_level_is_exact_at_vertices():
    enc = _grid(n_levels=1, base_res=8, max_res=8)
    with torch.no_grad():
        enc.params.normal_()
    ijk = torch.tensor([[0, 0, 0], [8, 8, 8], [3, 5, 7], [8, 0, 2]])
    out = enc(ijk.float() / 8)
    rows = ijk[:, 0] + 9 * (ijk[:, 1] + 9 * ijk[:, 2])
    assert torch.allclose(out, enc.params[rows], atol=1e-6)


def test_output_is_trilinear_inside_a_cell():
    enc = _grid(n_levels=1, base_res=8, max_res=8)
    with torch.no_grad():
        enc.params.normal_()
    corners = torch.tensor([[i, j, k] for k in (0, 1) for j in (0, 1) for i in (0, 1)]) + torch.tensor([2, 4, 1])
    vals = enc(corners.float() / 8)  # [8,F] ordered with x fastest
    f = torch.tensor([0.3, 0.7, 0.2])
    x = (torch.tensor([2, 4, 1]) + f) / 8
    w = torch.tensor([(f[0] if i else 1 - f[0]) * (f[1] if j else 1 - f[1]) * (f[2] if k else 1 - f[2])
                      for k in (0, 1) for j in (0, 1) for i in (0, 1)])
    assert torch.allclose(enc(x[None])[0], (w[:, None] * vals).sum(0), atol=1e-5)


def test_continuous_across_cell_boundaries_on_every_level():
    enc = _grid()
    with torch.no_grad():
        enc.params.normal_()
    x = torch.rand(200, 3) * 0.98 + 0.01
    # Put each point on a cell face of the finest level in x, then step a hair to either side.
    x[:, 0] = torch.round(x[:, 0] * 64) / 64
    def jump(eps):
        step = torch.tensor([eps, 0.0, 0.0])
        return (enc(x + step) - enc(x - step)).abs().max()

    # Continuous: the jump shrinks with the step (a seam would leave a jump of order 1 however small the step).
    assert jump(1e-6) < jump(1e-4) / 20 and jump(1e-6) < 1e-3


def test_gradient_reaches_exactly_the_eight_corners_per_level():
    enc = _grid(n_levels=2, base_res=4, max_res=8)
    x = torch.tensor([[0.41, 0.13, 0.77]])
    enc(x).sum().backward()
    touched = (enc.params.grad.abs().sum(-1) > 0).nonzero().squeeze(1)
    assert touched.numel() == 16
    base4 = (x[0] * 4).floor().long()
    rows = {int(base4[0] + i + 5 * (base4[1] + j + 5 * (base4[2] + k)))
            for i in (0, 1) for j in (0, 1) for k in (0, 1)}
    assert rows <= set(touched.tolist())
    # Interpolation weights sum to one, so the gradient of the summed features is 1 per level and feature.
    assert torch.allclose(enc.params.grad.sum(0), torch.full((2,), 2.0), atol=1e-5)


def test_hashed_levels_stay_in_their_table_and_boundary_points_work():
    enc = _grid(n_levels=2, log2_size=8, base_res=16, max_res=32)
    assert not enc._dense.any()
    rows, w, _ = enc.corners(torch.rand(1000, 3))
    assert rows[0].min() >= 0 and rows[0].max() < 256 and rows[1].min() >= 256 and rows[1].max() < 512
    assert torch.allclose(w.sum(1), torch.ones(2, 1000), atol=1e-5)
    out = enc(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.5, -0.2, 0.5]]))
    assert torch.isfinite(out).all()


def _reference(enc, x):
    """Per point, level and corner with Python integers: the Instant-NGP definition written out plainly."""
    out = torch.zeros(x.shape[0], enc.out_dim)
    table = 2 ** 12
    offset = 0
    for level, res in enumerate(enc.resolutions):
        dense = (res + 1) ** 3 <= table
        for n, p in enumerate(x.tolist()):
            pos = [min(max(v, 0.0), 1.0) * res for v in p]
            base = [min(int(v // 1), res - 1) for v in pos]
            for c in range(8):
                v = [base[a] + ((c >> (2 - a)) & 1) for a in range(3)]
                w = 1.0
                for a in range(3):
                    f = pos[a] - base[a]
                    w *= f if (c >> (2 - a)) & 1 else 1 - f
                if dense:
                    row = v[0] + (res + 1) * v[1] + (res + 1) ** 2 * v[2]
                else:
                    row = (v[0] ^ (v[1] * 2654435761) ^ (v[2] * 805459861)) % table
                out[n, 2 * level:2 * level + 2] += w * enc.params[offset + row].detach()
        offset += (res + 1) ** 3 if dense else table
    return out


def test_matches_a_plain_reference_on_dense_and_hashed_levels():
    enc = _grid()
    with torch.no_grad():
        enc.params.normal_()
    x = torch.cat([torch.rand(40, 3), torch.tensor([[1.0, 0.0, 0.5], [0.999, 1.0, 0.0]])])
    assert torch.allclose(enc(x), _reference(enc, x), atol=1e-4)


@pytest.mark.parametrize("log2_size, max_res, narrow", [(19, 2048, True), (22, 4096, False)])
def test_hashed_rows_are_the_spatial_hash_in_either_integer_width(log2_size, max_res, narrow):
    """The lookup forms hashes in int32 with the primes masked to the table first, or in int64 where
    max_res·table would overflow int32: both give Instant-NGP's hash of the cell's corners exactly."""
    enc = TorchHashGrid(n_levels=3, n_features=2, log2_size=log2_size, base_res=512, max_res=max_res)
    assert enc._narrow is narrow and enc.n_dense == 0
    x = torch.cat([torch.rand(50, 3), torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.5]])])
    rows, _, _ = enc.corners(x)
    table = 2 ** log2_size
    for level, res in enumerate(enc.resolutions):
        cells = torch.minimum((res * x).floor(), torch.tensor(res - 1.0)).long().tolist()  # as the lookup rounds
        for n, cell in enumerate(cells):
            for c in range(8):
                v = [cell[a] + ((c >> (2 - a)) & 1) for a in range(3)]
                row = (v[0] ^ (v[1] * 2654435761) ^ (v[2] * 805459861)) % table
                assert rows[level, c, n].item() == level * table + row


def test_gradient_wrt_points_matches_finite_differences():
    enc = _grid()
    with torch.no_grad():
        enc.params.normal_()
    # Points at least 1e-3 away from the cell faces of every level, so the steps stay in one trilinear piece.
    x = torch.rand(400, 3)
    gap = torch.stack([((x * r) - (x * r).round()).abs().min(-1).values / r for r in enc.resolutions]).min(0).values
    x = x[gap > 1e-3][:30].requires_grad_()
    probe = torch.randn(x.shape[0], enc.out_dim)
    (enc(x) * probe).sum().backward()
    eps = 5e-4
    for a in range(3):
        step = torch.zeros(3)
        step[a] = eps
        fd = ((enc(x + step) - enc(x - step)) * probe).sum(-1) / (2 * eps)
        assert torch.allclose(x.grad[:, a], fd.detach(), rtol=1e-3, atol=2e-2)


def test_chunked_backward_sums_gradients_like_one_chunk(monkeypatch):
    enc = _grid()
    x = torch.rand(300, 3)
    enc(x).square().sum().backward()
    whole = enc.params.grad.clone()
    enc.params.grad = None
    from prolific.field import hashgrid
    monkeypatch.setitem(hashgrid._HashGridFunction.CHUNK_ELEMENTS, "cpu", 8 * 4 * 7)  # 7 points per chunk
    enc(x).square().sum().backward()
    assert torch.allclose(enc.params.grad, whole, atol=1e-9)


@pytest.mark.skipif(not (tcnn_available() and torch.cuda.is_available()), reason="needs tinycudann and CUDA")
def test_tcnn_and_torch_agree_on_behaviour():
    torch.manual_seed(0)
    args = (8, 2, 16, 16, 512)
    tc = make_hash_encoding(*args, device="cuda", impl="tcnn")
    th = make_hash_encoding(*args, device="cpu").cuda()
    assert tc.impl == "tcnn" and th.impl == "torch" and tc.out_dim == th.out_dim == 16
    x = torch.rand(4096, 3, device="cuda")
    for enc in (tc, th):
        out = enc(x)
        assert out.shape == (4096, 16) and out.dtype == torch.float32
        params = next(enc.parameters())
        assert params.abs().max() <= 1e-4 + 1e-7
        with torch.no_grad():
            params.normal_()
        near = enc(x + 1e-5)
        assert (enc(x) - near).abs().max() < 0.05  # continuous
        out = enc(x)
        out.square().sum().backward()
        assert params.grad is not None and params.grad.abs().sum() > 0


def test_the_implementation_is_chosen_from_the_config_when_the_field_is_built():
    from prolific.config import make_config
    from prolific.errors import BadRequest
    from prolific.field.nerf import NeRF
    from prolific.field.texture import AlbedoField

    job = make_config("a ball", "test")
    assert job.hash_grid.impl == "auto"
    # On a CPU auto is the PyTorch grid, for stage 1's field and stage 3's texture field alike.
    assert NeRF(job.nerf, job.hash_grid).encoding.impl == AlbedoField(job.hash_grid, job.nerf.bound).encoding.impl \
        == "torch"
    for impl in ("triton", "tcnn"):
        with pytest.raises(BadRequest, match=f"The {impl} hash grid needs a CUDA device"):
            make_hash_encoding(4, 2, 12, 4, 64, device="cpu", impl=impl)
    with pytest.raises(BadRequest, match="hash_grid.impl"):
        make_config("a ball", "test", {"hash_grid": {"impl": "fast"}})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_is_the_triton_grid_on_cuda_and_loads_a_torch_checkpoint():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    fused = make_hash_encoding(8, 2, 16, 16, 512, device="cuda")
    plain = make_hash_encoding(8, 2, 16, 16, 512, device="cuda", impl="torch")
    assert fused.impl == "triton" and plain.impl == "torch"
    with torch.no_grad():
        plain.params.normal_()
    fused.load_state_dict(plain.state_dict())
    x = torch.rand(10000, 3, device="cuda")
    # Compiled, the cell fraction is one fused multiply-add where PyTorch rounds res·x first: up to
    # max_res·2^-24 of a cell apart (tests/kernel_cases.py::_tolerance).
    assert float((fused(x) - plain(x)).abs().max() / plain(x).abs().max()) <= 2 * 512 * 2.0 ** -24


def test_any_feature_count_looks_up_the_same_rows():
    """Two features are fetched as one 8-byte word, other counts row by row: a 4-feature grid equals two
    2-feature grids holding its feature halves, values and gradients."""
    wide, low, high = _grid(n_features=4), _grid(), _grid()
    with torch.no_grad():
        wide.params.normal_()
        low.params.copy_(wide.params[:, :2])
        high.params.copy_(wide.params[:, 2:])
    x = torch.rand(500, 3)
    out = wide(x).view(500, 4, 4)
    assert torch.equal(out[..., :2], low(x).view(500, 4, 2)) and torch.equal(out[..., 2:], high(x).view(500, 4, 2))
    wide(x).square().sum().backward()
    (low(x).square().sum() + high(x).square().sum()).backward()
    assert torch.allclose(wide.params.grad, torch.cat([low.params.grad, high.params.grad], 1), atol=1e-6)
