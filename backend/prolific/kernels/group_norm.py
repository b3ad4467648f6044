"""Group normalisation as Triton kernels: `group_norm`, the twin of `torch.nn.functional.group_norm` for an affine
norm whose weight and bias take no gradient (the frozen VAE's and UNet's), on NCHW or channels-last tensors.

PyTorch's CUDA group norm takes one thread block per (sample, group), which leaves most of an H200 idle on the
VAE encoder at 512 px, batch 1 (32 groups of a million values: its moments kernel took 5.7 ms of an encode's
forward + backward; issue 12's diagnosis), and it turns a channels-last input into NCHW and back around every
norm of the channels-last UNet. Here a group's pixels are split into pieces, one program each, which reads its
[pixels × the group's channels] tile through the tensor's own strides (so either memory format, and the output
keeps it): the moments are partial sums over the pieces (shifted by the group's first value, so
Σ(x−p)² − (Σ(x−p))²/L does not cancel for large means), added per group; the normalisation is one elementwise
pass. Backward takes the same route: partial sums of ĝ = ∂L/∂y·γ and ĝ·x̂ per piece, then
∂L/∂x = rstd·(ĝ − mean ĝ − x̂·mean(ĝ·x̂)).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE = 4096  # values of one group per program and block of pixels
ITERS = 2  # pixel blocks per program
WARPS = 4
# The sizes and the samples' strides are left unspecialised (one compiled kernel serves all the layers of a model
# instead of one per layer shape); the channel and pixel strides are not: Triton specialises a stride of 1, and
# only knowing which axis of the tile is contiguous lets it lay the tile out for coalesced loads. Unspecialised, the
# backward ran slower than PyTorch's (stage 2's backward 10.5 -> 12.9 ms on an H200, issue 12).
_SIZES = ["n_groups", "cg", "hw", "sx_n"]
_GRAD_SIZES = _SIZES + ["sd_n"]


@triton.jit
def _tile(piece, cg, hw, CGP: tl.constexpr, BP: tl.constexpr, ITERS: tl.constexpr, i: tl.constexpr):
    """Pixel and channel offsets of block i of a piece, and its mask."""
    p = (piece * ITERS + i) * BP + tl.arange(0, BP)
    j = tl.arange(0, CGP)
    return p, j, (p[:, None] < hw) & (j[None, :] < cg)


@triton.jit
def _moments(x_ptr, sums_ptr, grp, x_base, inv_len, eps):
    """The group's mean and 1/std from its shifted sums (the shift: the group's first value)."""
    pivot = tl.load(x_ptr + x_base).to(tl.float32)
    s1 = tl.load(sums_ptr + grp * 2) * inv_len
    s2 = tl.load(sums_ptr + grp * 2 + 1) * inv_len
    var = tl.maximum(s2 - s1 * s1, 0.0)
    return pivot + s1, 1.0 / tl.sqrt(var + eps)


@triton.jit(do_not_specialize=_SIZES)
def _gn_stats(x_ptr, part_ptr, n_groups, cg, hw, sx_n, sx_c, sx_p, CGP: tl.constexpr, BP: tl.constexpr,
              ITERS: tl.constexpr):
    grp, piece = tl.program_id(0), tl.program_id(1)
    x_base = (grp // n_groups).to(tl.int64) * sx_n + (grp % n_groups).to(tl.int64) * cg * sx_c
    pivot = tl.load(x_ptr + x_base).to(tl.float32)
    acc1 = tl.zeros([BP, CGP], dtype=tl.float32)
    acc2 = tl.zeros([BP, CGP], dtype=tl.float32)
    for i in tl.static_range(ITERS):
        p, j, m = _tile(piece, cg, hw, CGP, BP, ITERS, i)
        x = tl.load(x_ptr + x_base + p[:, None].to(tl.int64) * sx_p + j[None, :] * sx_c, mask=m, other=0.0)
        d = tl.where(m, x.to(tl.float32) - pivot, 0.0)
        acc1 += d
        acc2 += d * d
    out = (grp * tl.num_programs(1) + piece) * 2
    tl.store(part_ptr + out, tl.sum(tl.sum(acc1, axis=1), axis=0))
    tl.store(part_ptr + out + 1, tl.sum(tl.sum(acc2, axis=1), axis=0))


@triton.jit(do_not_specialize=_SIZES)
def _gn_apply(x_ptr, y_ptr, w_ptr, b_ptr, sums_ptr, n_groups, cg, hw, sx_n, sx_c, sx_p, inv_len, eps,
              CGP: tl.constexpr, BP: tl.constexpr, ITERS: tl.constexpr):
    grp, piece = tl.program_id(0), tl.program_id(1)
    g = grp % n_groups
    x_base = (grp // n_groups).to(tl.int64) * sx_n + g.to(tl.int64) * cg * sx_c
    mean, rstd = _moments(x_ptr, sums_ptr, grp, x_base, inv_len, eps)
    j = tl.arange(0, CGP)
    w = tl.load(w_ptr + g * cg + j, mask=j < cg, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + g * cg + j, mask=j < cg, other=0.0).to(tl.float32)
    for i in tl.static_range(ITERS):
        p, j, m = _tile(piece, cg, hw, CGP, BP, ITERS, i)
        at = x_base + p[:, None].to(tl.int64) * sx_p + j[None, :] * sx_c
        x = tl.load(x_ptr + at, mask=m, other=0.0).to(tl.float32)
        y = (x - mean) * rstd * w[None, :] + b[None, :]
        tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _grad_tile(x_ptr, dy_ptr, x_base, d_base, p, j, m, w, mean, rstd, sx_c, sx_p, sd_c, sd_p):
    """ĝ = ∂L/∂y·γ and x̂ of a tile (zero where masked)."""
    x = tl.load(x_ptr + x_base + p[:, None].to(tl.int64) * sx_p + j[None, :] * sx_c, mask=m, other=0.0)
    dy = tl.load(dy_ptr + d_base + p[:, None].to(tl.int64) * sd_p + j[None, :] * sd_c, mask=m, other=0.0)
    xhat = tl.where(m, (x.to(tl.float32) - mean) * rstd, 0.0)
    return dy.to(tl.float32) * w[None, :], xhat


@triton.jit(do_not_specialize=_GRAD_SIZES)
def _gn_bwd_stats(x_ptr, dy_ptr, w_ptr, sums_ptr, part_ptr, n_groups, cg, hw, sx_n, sx_c, sx_p, sd_n, sd_c, sd_p,
                  inv_len, eps, CGP: tl.constexpr, BP: tl.constexpr, ITERS: tl.constexpr):
    grp, piece = tl.program_id(0), tl.program_id(1)
    n, g = (grp // n_groups).to(tl.int64), grp % n_groups
    x_base = n * sx_n + g.to(tl.int64) * cg * sx_c
    d_base = n * sd_n + g.to(tl.int64) * cg * sd_c
    mean, rstd = _moments(x_ptr, sums_ptr, grp, x_base, inv_len, eps)
    j = tl.arange(0, CGP)
    w = tl.load(w_ptr + g * cg + j, mask=j < cg, other=0.0).to(tl.float32)
    acc1 = tl.zeros([BP, CGP], dtype=tl.float32)
    acc2 = tl.zeros([BP, CGP], dtype=tl.float32)
    for i in tl.static_range(ITERS):
        p, j, m = _tile(piece, cg, hw, CGP, BP, ITERS, i)
        gw, xhat = _grad_tile(x_ptr, dy_ptr, x_base, d_base, p, j, m, w, mean, rstd, sx_c, sx_p, sd_c, sd_p)
        acc1 += gw
        acc2 += gw * xhat
    out = (grp * tl.num_programs(1) + piece) * 2
    tl.store(part_ptr + out, tl.sum(tl.sum(acc1, axis=1), axis=0))
    tl.store(part_ptr + out + 1, tl.sum(tl.sum(acc2, axis=1), axis=0))


@triton.jit(do_not_specialize=_GRAD_SIZES)
def _gn_bwd_dx(x_ptr, dy_ptr, w_ptr, sums_ptr, dsums_ptr, dx_ptr, n_groups, cg, hw, sx_n, sx_c, sx_p, sd_n, sd_c,
               sd_p, inv_len, eps, CGP: tl.constexpr, BP: tl.constexpr, ITERS: tl.constexpr):
    grp, piece = tl.program_id(0), tl.program_id(1)
    n, g = (grp // n_groups).to(tl.int64), grp % n_groups
    x_base = n * sx_n + g.to(tl.int64) * cg * sx_c
    d_base = n * sd_n + g.to(tl.int64) * cg * sd_c
    mean, rstd = _moments(x_ptr, sums_ptr, grp, x_base, inv_len, eps)
    mean_g = tl.load(dsums_ptr + grp * 2) * inv_len
    mean_gx = tl.load(dsums_ptr + grp * 2 + 1) * inv_len
    j = tl.arange(0, CGP)
    w = tl.load(w_ptr + g * cg + j, mask=j < cg, other=0.0).to(tl.float32)
    for i in tl.static_range(ITERS):
        p, j, m = _tile(piece, cg, hw, CGP, BP, ITERS, i)
        gw, xhat = _grad_tile(x_ptr, dy_ptr, x_base, d_base, p, j, m, w, mean, rstd, sx_c, sx_p, sd_c, sd_p)
        dx = rstd * (gw - mean_g - xhat * mean_gx)
        at = x_base + p[:, None].to(tl.int64) * sx_p + j[None, :] * sx_c
        tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=m)


def flat_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(sample, channel, pixel) strides of an [N, C, *spatial] tensor whose spatial dimensions make one strided
    run of pixels (NCHW-contiguous, channels-last, or a transposed [N, L, C] view), else None."""
    if t.dim() < 3:
        return None
    dims = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size != 1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != size * inner:
            return None
    return t.stride(0), t.stride(1), dims[-1][1] if dims else 1


def _launch(x: torch.Tensor, groups: int) -> tuple[tuple[int, int], dict, tuple, float]:
    """A group norm of x's launch grid, tile shape, runtime sizes and strides (n_groups, cg, hw, sx_n, sx_c,
    sx_p), and 1 / values per group."""
    n, c = x.shape[:2]
    cg, hw = c // groups, x[0, 0].numel()
    cgp = triton.next_power_of_2(cg)
    bp = max(1, TILE // cgp)
    grid = (n * groups, triton.cdiv(hw, bp * ITERS))
    meta = dict(CGP=cgp, BP=bp, ITERS=ITERS, num_warps=WARPS)
    return grid, meta, (groups, cg, hw, *flat_strides(x)), 1.0 / (cg * hw)


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        grid, meta, sizes, inv_len = _launch(x, groups)
        parts = torch.empty(*grid, 2, dtype=torch.float32, device=x.device)
        _gn_stats[grid](x, parts, *sizes, **meta)
        sums = parts.sum(1)
        y = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)  # addressed as x
        _gn_apply[grid](x, y, weight, bias, sums, *sizes, inv_len, eps, **meta)
        ctx.save_for_backward(x, weight, sums)
        ctx.groups, ctx.eps = groups, eps
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, sums = ctx.saved_tensors
        sd = flat_strides(dy)
        if sd is None:
            dy = dy.contiguous()
            sd = flat_strides(dy)
        grid, meta, sizes, inv_len = _launch(x, ctx.groups)
        parts = torch.empty(*grid, 2, dtype=torch.float32, device=x.device)
        _gn_bwd_stats[grid](x, dy, weight, sums, parts, *sizes, *sd, inv_len, ctx.eps, **meta)
        dx = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        _gn_bwd_dx[grid](x, dy, weight, sums, parts.sum(1), dx, *sizes, *sd, inv_len, ctx.eps, **meta)
        return dx, None, None, None, None


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
               eps: float = 1e-5) -> torch.Tensor:
    """F.group_norm(x, groups, weight, bias, eps) for an x that `flat_strides` takes (the output has x's strides);
    no gradient reaches weight or bias."""
    return _GroupNorm.apply(x, weight, bias, groups, eps)
