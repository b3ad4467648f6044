"""The fused MLP kernels (kernels/mlp.py) against nn.Sequential on the same weights. Not collected on its own:
tests/test_kernels.py runs this file as it runs kernel_cases.py, under Triton's interpreter on CPU tensors and,
on a CUDA machine, compiled on the GPU."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernel_device import DEVICE, INTERPRETED, require_kernels

require_kernels()

from prolific.field.mlp import TritonMLP, make_mlp  # noqa: E402
from prolific.kernels import mlp as kernels  # noqa: E402

# Row counts: none, fewer than one block, and a count that is a multiple of neither kernel's block (so the last
# block is partial and the backward's programs take different numbers of blocks).
ROWS = [0, 5, 300] if INTERPRETED else [0, 1000, 200_003]
# (in, hidden layers, out): stage 1's NeRF, stage 3's texture field, and inputs that need padding.
SHAPES = [(32, 2, 4), (24, 2, 4), (32, 1, 3), (20, 1, 3)]
# Relative to the largest entry of the reference. Both sides add the same fp32 terms in another order (and the
# GPU's 3xTF32 products carry ~2^-21 of relative error, a few fp32 roundings): outputs and the input's gradient
# sum ≤ 64 terms per entry; the weights' gradients sum over all rows, whose rounding grows like √rows·2^-24.
TOL_ROWS, TOL_SUMS = 1e-5, 1e-4
# Rows with a hidden pre-activation this close to ReLU's kink get no output gradient: summed in another order it
# may land on the other side of 0, which flips that unit's gradient for the row (an O(1) change, not rounding).
KINK = 1e-4


def _pair(shape, seed=0):
    in_dim, layers, out_dim = shape
    torch.manual_seed(seed)
    ref = make_mlp(in_dim, 64, out_dim, layers, device=DEVICE)
    fused = TritonMLP(*make_mlp(in_dim, 64, out_dim, layers, device=DEVICE))
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _inputs(n, in_dim, contiguous=True):
    x = torch.randn(n, 2 * in_dim, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    return x[:, :in_dim].contiguous() if contiguous else x[:, ::2]


def _near_kink(ref, x):
    """Rows [N] (bool) with a hidden pre-activation within KINK of 0, in float64."""
    h, near = x.double(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for m in ref[:-1]:
        if isinstance(m, nn.Linear):
            h = F.linear(h, m.weight.double(), m.bias.double())
            near |= (h.abs() < KINK).any(dim=1)
        else:
            h = h.relu()
    return near


def _rel(a, b):
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("contiguous", [True, False])
def test_fused_forward_matches_the_sequential(shape, n, contiguous):
    ref, fused = _pair(shape)
    x = _inputs(n, shape[0], contiguous)
    with torch.no_grad():
        a, b = ref(x), fused(x)
    assert b.shape == a.shape == (n, shape[2]) and b.dtype == torch.float32
    if n:
        assert _rel(a, b) <= TOL_ROWS


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("with_input", [True, False])
def test_fused_gradients_match_the_sequential(shape, n, with_input):
    ref, fused = _pair(shape)
    x = _inputs(n, shape[0], contiguous=False)
    g = torch.randn(n, shape[2], generator=torch.Generator().manual_seed(2)).to(DEVICE)
    g[_near_kink(ref, x)] = 0
    grads = []
    for mlp in (ref, fused):
        xi = x.clone().requires_grad_(with_input)
        (mlp(xi) * g).sum().backward()
        grads.append([xi.grad] + [p.grad for p in mlp.parameters()])
    (xa, *pa), (xb, *pb) = grads
    assert len(pa) == len(pb) == 2 * (shape[1] + 1)
    for a, b in zip(pa, pb):
        assert b.shape == a.shape
        assert (n == 0 and not b.any()) or _rel(a, b) <= TOL_SUMS
    if not with_input:
        assert xb is None
    elif n:
        assert _rel(xa, xb) <= TOL_ROWS


def test_the_backward_saves_only_the_input_and_the_weights():
    ref, fused = _pair(SHAPES[0])
    x = _inputs(ROWS[-1], SHAPES[0][0]).requires_grad_()
    y = fused(x)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 7 and saved[0].shape == x.shape
    assert all(s.shape == p.shape for s, p in zip(saved[1:], fused.parameters()))
    with pytest.raises(RuntimeError):  # first order only
        gx, = torch.autograd.grad(y.sum(), x, create_graph=True)
        gx.sum().backward()


def test_state_dicts_load_across_the_two():
    ref, fused = _pair(SHAPES[0])
    assert list(fused.state_dict()) == list(ref.state_dict()) == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    back = make_mlp(32, 64, 4, 2, device=DEVICE)
    back.load_state_dict(fused.state_dict())
    x = _inputs(ROWS[-1], 32)
    with torch.no_grad():
        assert torch.equal(back(x), ref(x))
        assert _rel(ref(x), fused(x)) <= TOL_ROWS


def test_the_backward_grid_is_persistent():
    x = _inputs(ROWS[-1], 32)
    blocks = -(-x.shape[0] // kernels.BACKWARD_BLOCK)
    assert 1 < kernels._programs(x, blocks) < blocks


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]])
@pytest.mark.parametrize("n", ROWS)
def test_level_major_features_give_the_row_major_results(shape, n):
    """Features [L, N, F] as the hash grid lays them out: the same outputs and gradients as their [N, L·F]
    transposition (the kernels read and write that layout instead of a copy)."""
    ref, fused = _pair(shape)
    in_dim, levels = shape[0], shape[0] // 2
    lm = torch.randn(levels, n, 2, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    x = lm.permute(1, 0, 2).reshape(n, in_dim)
    g = torch.randn(n, shape[2], generator=torch.Generator().manual_seed(2)).to(DEVICE)
    g[_near_kink(ref, x)] = 0
    grads = []
    for inputs in (x, lm):
        xi = inputs.clone().requires_grad_()
        y = fused(xi)
        (y * g).sum().backward()
        grads.append((y.detach(), xi.grad, [p.grad.clone() for p in fused.parameters()]))
        fused.zero_grad(set_to_none=True)
    (ya, xa, pa), (yb, xb, pb) = grads
    assert yb.shape == (n, shape[2]) and xb.shape == lm.shape
    # The same products in the same order: equal, not just close.
    assert torch.equal(ya, yb) and torch.equal(xa, xb.permute(1, 0, 2).reshape(n, in_dim))
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))
    with torch.no_grad():
        assert (n == 0 or _rel(ref(x), yb) <= TOL_ROWS)


def test_features_of_the_wrong_width_are_refused():
    _, fused = _pair(SHAPES[0])
    for x in (torch.zeros(8, 5, 2, device=DEVICE), torch.zeros(8, 30, device=DEVICE)):
        with pytest.raises(ValueError, match="do not give the MLP's 32 inputs"):
            fused(x)


def test_level_major_features_under_autocast_run_the_sequentials_layers():
    """Autocast asks for the layers in lower precision, which the kernels do not compute: the features are then
    transposed and go through the Sequential's layers, as row-major ones do."""
    ref, fused = _pair(SHAPES[0])
    lm = torch.randn(16, 100, 2, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    x = lm.permute(1, 0, 2).reshape(100, 32)
    with torch.no_grad(), torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        a, b = ref(x), fused(lm)
    assert b.dtype == torch.bfloat16 and torch.equal(a, b)


def test_products_follow_pytorchs_tf32_switch_unless_exact():
    """Where a job allows TF32 for fp32 matmuls (the `tf32` speed option), the fused MLP's products are TF32 as
    nn.Linear's are: within TF32's rounding of the fp32 result (compiled; the interpreter computes in fp32).
    `exact` (the finite-difference normals) keeps 3xTF32 either way."""
    from prolific.prior.speed import backend_flags
    from prolific.speed_options import SpeedOptions

    ref, fused = _pair(SHAPES[0])
    x = _inputs(ROWS[-1], SHAPES[0][0])
    with torch.no_grad():
        full = fused(x)
        with backend_flags(SpeedOptions(tf32=True)):
            tf32, exact = fused(x), fused(x, exact=True)
        assert torch.equal(exact, full) and _rel(ref(x), full) <= TOL_ROWS
        assert _rel(full, tf32) <= 1e-2
        if not INTERPRETED:
            assert _rel(full, tf32) > TOL_ROWS  # the TF32 products did run
