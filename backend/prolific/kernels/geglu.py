"""GEGLU as Triton kernels: `geglu(p)` = a·GELU(g) for the halves [a | g] of each row of p, a projection's output
(diffusers' GEGLU: the feed-forward of every transformer block of an SD UNet), with GELU the exact (erf) one, as
F.gelu's default.

PyTorch runs it as a GELU over the gate half and a product of the two halves, both strided views of p (its
elementwise loop takes them unvectorised), and its backward as three more such passes. Here the forward is one
pass over p writing the product, and the backward one pass over p and the output's gradient writing both halves'
gradients: ∂a = dy·GELU(g), ∂g = dy·a·(Φ(g) + g·φ(g)). The math is fp32, rounded to p's dtype once (PyTorch
rounds GELU(g) and then the product: at most one rounding step apart).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# A program's tile: rows × columns of the output. 256 columns divide SD's feed-forward widths (4 × 320, 640, 1280).
BM, BN = 4, 256
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _tile(p_ptr, M, D, BM: tl.constexpr, BN: tl.constexpr):
    """This program's rows and columns: offsets of a and g in p ([M, 2D]) and of the output ([M, D]), the mask,
    and a, g in fp32."""
    rows = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    m = (rows[:, None] < M) & (cols[None, :] < D)
    at_a = rows[:, None] * 2 * D + cols[None, :]
    a = tl.load(p_ptr + at_a, mask=m, other=0.0).to(tl.float32)
    g = tl.load(p_ptr + at_a + D, mask=m, other=0.0).to(tl.float32)
    return at_a, rows[:, None] * D + cols[None, :], m, a, g


@triton.jit(do_not_specialize=["M"])
def _geglu_fwd(p_ptr, out_ptr, M, D, BM: tl.constexpr, BN: tl.constexpr):
    _, at_out, m, a, g = _tile(p_ptr, M, D, BM, BN)
    out = a * (0.5 * g * (1.0 + tl.erf(g * _SQRT_HALF)))
    tl.store(out_ptr + at_out, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["M"])
def _geglu_bwd(p_ptr, dy_ptr, dp_ptr, M, D, BM: tl.constexpr, BN: tl.constexpr):
    at_a, at_out, m, a, g = _tile(p_ptr, M, D, BM, BN)
    dy = tl.load(dy_ptr + at_out, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(g * _SQRT_HALF))
    pdf = tl.exp(-0.5 * g * g) * _INV_SQRT_2PI
    tl.store(dp_ptr + at_a, (dy * g * cdf).to(dp_ptr.dtype.element_ty), mask=m)
    tl.store(dp_ptr + at_a + D, (dy * a * (cdf + g * pdf)).to(dp_ptr.dtype.element_ty), mask=m)


def _grid(M: int, D: int) -> tuple[int, int]:
    return triton.cdiv(M, BM), triton.cdiv(D, BN)


class _GEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p):
        D = p.shape[-1] // 2
        p2 = p.reshape(-1, 2 * D)
        out = p2.new_empty(p2.shape[0], D)
        if p2.shape[0] > 0:  # an empty launch grid is not a valid CUDA launch
            _geglu_fwd[_grid(p2.shape[0], D)](p2, out, p2.shape[0], D, BM=BM, BN=BN)
        ctx.save_for_backward(p2)
        ctx.shape = p.shape
        return out.view(*p.shape[:-1], D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (p2,) = ctx.saved_tensors
        D = p2.shape[1] // 2
        dy = grad_out.reshape(-1, D).contiguous()
        dp = torch.empty_like(p2)
        if p2.shape[0] > 0:
            _geglu_bwd[_grid(p2.shape[0], D)](p2, dy, dp, p2.shape[0], D, BM=BM, BN=BN)
        return dp.view(ctx.shape)


def geglu(p: torch.Tensor) -> torch.Tensor:
    """a·GELU(g) [..., D] for p = [a | g] [..., 2D] (contiguous), in p's dtype; differentiable in p."""
    if p.shape[-1] % 2 or not p.is_contiguous():
        raise ValueError("geglu takes a contiguous tensor whose last dimension holds two halves.")
    return _GEGLU.apply(p)
