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

BLOCK = 1024  # columns of one row per program
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit(do_not_specialize=["M"])
def _geglu_fwd(p_ptr, out_ptr, M, D, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    a = tl.load(p_ptr + row * 2 * D + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(p_ptr + row * 2 * D + D + cols, mask=m, other=0.0).to(tl.float32)
    out = a * (0.5 * g * (1.0 + tl.erf(g * _SQRT_HALF)))
    tl.store(out_ptr + row * D + cols, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["M"])
def _geglu_bwd(p_ptr, dy_ptr, dp_ptr, M, D, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < D
    a = tl.load(p_ptr + row * 2 * D + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(p_ptr + row * 2 * D + D + cols, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
    cdf = 0.5 * (1.0 + tl.erf(g * _SQRT_HALF))
    pdf = tl.exp(-0.5 * g * g) * _INV_SQRT_2PI
    tl.store(dp_ptr + row * 2 * D + cols, (dy * g * cdf).to(dp_ptr.dtype.element_ty), mask=m)
    tl.store(dp_ptr + row * 2 * D + D + cols, (dy * a * (cdf + g * pdf)).to(dp_ptr.dtype.element_ty), mask=m)


def _grid(M: int, D: int) -> tuple[int, int]:
    return M, triton.cdiv(D, BLOCK)


class _GEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p):
        D = p.shape[-1] // 2
        p2 = p.reshape(-1, 2 * D)
        out = p2.new_empty(p2.shape[0], D)
        if p2.shape[0] > 0:  # an empty launch grid is not a valid CUDA launch
            _geglu_fwd[_grid(p2.shape[0], D)](p2, out, p2.shape[0], D, BLOCK=BLOCK)
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
            _geglu_bwd[_grid(p2.shape[0], D)](p2, dy, dp, p2.shape[0], D, BLOCK=BLOCK)
        return dp.view(ctx.shape)


def geglu(p: torch.Tensor) -> torch.Tensor:
    """a·GELU(g) [..., D] for p = [a | g] [..., 2D] (contiguous), in p's dtype; differentiable in p."""
    if p.shape[-1] % 2 or not p.is_contiguous():
        raise ValueError("geglu takes a contiguous tensor whose last dimension holds two halves.")
    return _GEGLU.apply(p)
