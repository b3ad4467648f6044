"""The multiresolution hash encoding as Triton kernels: `hash_encode`, the fused lookup of a `TorchHashGrid`'s
table (field/hashgrid.py's `TritonHashGrid` calls it; same levels, hashing, table and initialisation, so
state_dicts load in either).

One program takes BLOCK points through one level, and the launch grid runs level by level, as torch-ngp's
gridencoder does: the GPU works on one level's slice of the table at a time (2^19 rows × F features, a few MB),
which stays in L2, where taking every level at once (64 MB for the standard grid) would miss it on most
gathers. Features and their gradients are laid out level-major [L, N, F] inside, so each level's reads and
writes are contiguous; the one transposition to [N, L·F] is a plain copy. The 8 corners' rows are
computed in registers (dense index or the spatial hash, exactly as `TorchHashGrid.corners`; in uint32, which
wraps mod 2^32 and so agrees with its int64 products once masked to the table), their features gathered and
blended. Backward recomputes the corners: the table's gradient is scattered with relaxed fp32 atomic adds (the
table is stored in fp32: Adam's updates of 1e-2·lr scale vanish in fp16/bf16, and so would small gradient sums
accumulated in them), and the points' gradient, only when a caller asks for it, is the derivative of the
trilinear weights, summed over levels with atomic adds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


BLOCK = 128
# Warps per program, the fastest of a BLOCK 64-512 × 1-8 warps sweep of the kernels alone at 4M points on an
# H200 (a throwaway script; `prolific bench hashgrid` with them: bench_results/2026-12-01_h200_hashgrid.json).
FORWARD_WARPS, BACKWARD_WARPS = 8, 4


@triton.jit
def _load_block(x_ptr, n, n_levels, F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr):
    """This program's level, point indices and mask, the feature lanes and their mask, and the points'
    coordinates."""
    level = tl.program_id(1)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < n
    feat = tl.arange(0, FP)
    m2 = m[:, None] & (feat[None, :] < F)
    x0 = tl.load(x_ptr + idx * 3, mask=m, other=0.0)
    x1 = tl.load(x_ptr + idx * 3 + 1, mask=m, other=0.0)
    x2 = tl.load(x_ptr + idx * 3 + 2, mask=m, other=0.0)
    return level, idx, m, feat, m2, x0, x1, x2


@triton.jit
def _level_setup(x0, x1, x2, res_ptr, level):
    res = tl.load(res_ptr + level)
    resf = res.to(tl.float32)
    p0, p1, p2 = resf * x0, resf * x1, resf * x2
    b0 = tl.minimum(tl.floor(p0).to(tl.int32), res - 1)
    b1 = tl.minimum(tl.floor(p1).to(tl.int32), res - 1)
    b2 = tl.minimum(tl.floor(p2).to(tl.int32), res - 1)
    return b0, b1, b2, p0 - b0.to(tl.float32), p1 - b1.to(tl.float32), p2 - b2.to(tl.float32), resf


@triton.jit
def _corner_row(b0, b1, b2, cx: tl.constexpr, cy: tl.constexpr, cz: tl.constexpr, mult_ptr, off_ptr, level,
                is_dense, table_mask):
    m0 = tl.load(mult_ptr + level * 3).to(tl.uint32)
    m1 = tl.load(mult_ptr + level * 3 + 1).to(tl.uint32)
    m2 = tl.load(mult_ptr + level * 3 + 2).to(tl.uint32)
    t0 = ((b0 + cx).to(tl.uint32) * m0) & table_mask
    t1 = ((b1 + cy).to(tl.uint32) * m1) & table_mask
    t2 = ((b2 + cz).to(tl.uint32) * m2) & table_mask
    row = tl.where(is_dense, t0 + t1 + t2, t0 ^ t1 ^ t2)
    return row.to(tl.int32) + tl.load(off_ptr + level)


@triton.jit
def _corner(c: tl.constexpr, b0, b1, b2, f0, f1, f2, mult_ptr, off_ptr, level, is_dense, table_mask):
    """Corner c (0-7, bits x y z) of each point's cell: its three trilinear weight factors and its table row."""
    cx: tl.constexpr = (c >> 2) & 1
    cy: tl.constexpr = (c >> 1) & 1
    cz: tl.constexpr = c & 1
    wx = f0 if cx == 1 else 1 - f0
    wy = f1 if cy == 1 else 1 - f1
    wz = f2 if cz == 1 else 1 - f2
    row = _corner_row(b0, b1, b2, cx, cy, cz, mult_ptr, off_ptr, level, is_dense, table_mask)
    return wx, wy, wz, row


@triton.jit
def _hashgrid_fwd(x_ptr, params_ptr, out_ptr, res_ptr, mult_ptr, off_ptr, n, n_levels, n_dense, table_mask,
                  F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr):
    level, idx, m, feat, m2, x0, x1, x2 = _load_block(x_ptr, n, n_levels, F, FP, BLOCK)
    mask_u = table_mask.to(tl.uint32)
    b0, b1, b2, f0, f1, f2, resf = _level_setup(x0, x1, x2, res_ptr, level)
    is_dense = level < n_dense
    acc = tl.zeros([BLOCK, FP], dtype=tl.float32)
    for c in tl.static_range(8):
        wx, wy, wz, row = _corner(c, b0, b1, b2, f0, f1, f2, mult_ptr, off_ptr, level, is_dense, mask_u)
        vals = tl.load(params_ptr + row[:, None] * F + feat[None, :], mask=m2, other=0.0)
        acc += (wx * wy * wz)[:, None] * vals
    tl.store(out_ptr + (level.to(tl.int64) * n + idx[:, None]) * F + feat[None, :], acc, mask=m2)


@triton.jit
def _hashgrid_bwd(x_ptr, params_ptr, grad_out_ptr, grad_params_ptr, grad_x_ptr, res_ptr, mult_ptr, off_ptr, n,
                  n_levels, n_dense, table_mask, F: tl.constexpr, FP: tl.constexpr, WANT_PARAMS: tl.constexpr,
                  WANT_X: tl.constexpr, BLOCK: tl.constexpr):
    level, idx, m, feat, m2, x0, x1, x2 = _load_block(x_ptr, n, n_levels, F, FP, BLOCK)
    mask_u = table_mask.to(tl.uint32)
    gx0 = tl.zeros([BLOCK], dtype=tl.float32)
    gx1 = tl.zeros([BLOCK], dtype=tl.float32)
    gx2 = tl.zeros([BLOCK], dtype=tl.float32)
    b0, b1, b2, f0, f1, f2, resf = _level_setup(x0, x1, x2, res_ptr, level)
    is_dense = level < n_dense
    g = tl.load(grad_out_ptr + (level.to(tl.int64) * n + idx[:, None]) * F + feat[None, :], mask=m2, other=0.0)
    for c in tl.static_range(8):
        wx, wy, wz, row = _corner(c, b0, b1, b2, f0, f1, f2, mult_ptr, off_ptr, level, is_dense, mask_u)
        ptr = row[:, None] * F + feat[None, :]
        if WANT_PARAMS:
            tl.atomic_add(grad_params_ptr + ptr, (wx * wy * wz)[:, None] * g, mask=m2, sem="relaxed")
        if WANT_X:
            per_corner = tl.sum(g * tl.load(params_ptr + ptr, mask=m2, other=0.0), axis=1) * resf
            # d(weight)/dx of the corner: +1 or -1 (its x bit) times the other two factors; likewise y, z.
            gx0 += (2 * ((c >> 2) & 1) - 1) * (wy * wz) * per_corner
            gx1 += (2 * ((c >> 1) & 1) - 1) * (wx * wz) * per_corner
            gx2 += (2 * (c & 1) - 1) * (wx * wy) * per_corner
    if WANT_X:
        tl.atomic_add(grad_x_ptr + idx * 3, gx0, mask=m, sem="relaxed")
        tl.atomic_add(grad_x_ptr + idx * 3 + 1, gx1, mask=m, sem="relaxed")
        tl.atomic_add(grad_x_ptr + idx * 3 + 2, gx2, mask=m, sem="relaxed")


def _layout(grid) -> tuple:
    return grid._res.int().contiguous(), grid._mult.contiguous(), grid._offsets.contiguous()


class _TritonHashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, grid):
        ctx.grid = grid
        ctx.save_for_backward(x, params)
        n, L, F = x.shape[0], grid.n_levels, grid.n_features
        if n == 0:  # an empty launch grid is not a valid CUDA launch
            return x.new_empty(0, grid.out_dim)
        out = x.new_empty(L, n, F)
        res, mult, off = _layout(grid)
        _hashgrid_fwd[(triton.cdiv(n, BLOCK), L)](x, params, out, res, mult, off, n, L, grid.n_dense, grid._mask,
                                                  F=F, FP=triton.next_power_of_2(F), BLOCK=BLOCK,
                                                  num_warps=FORWARD_WARPS)
        return out.permute(1, 0, 2).reshape(n, L * F)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, params = ctx.saved_tensors
        grid = ctx.grid
        want_x, want_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, L, F = x.shape[0], grid.n_levels, grid.n_features
        grad_x = torch.zeros_like(x) if want_x else x.new_empty(0)
        grad_params = torch.zeros_like(params) if want_params else params.new_empty(0)
        if n > 0 and (want_x or want_params):
            res, mult, off = _layout(grid)
            g = grad_out.float().reshape(n, L, F).permute(1, 0, 2).contiguous()  # level-major, as the kernel reads
            _hashgrid_bwd[(triton.cdiv(n, BLOCK), L)](x, params, g, grad_params, grad_x, res, mult, off, n, L,
                                                      grid.n_dense, grid._mask, F=F, FP=triton.next_power_of_2(F),
                                                      WANT_PARAMS=want_params, WANT_X=want_x, BLOCK=BLOCK,
                                                      num_warps=BACKWARD_WARPS)
        return grad_x if want_x else None, grad_params if want_params else None, None


def hash_encode(x: torch.Tensor, params: torch.Tensor, grid) -> torch.Tensor:
    """Features [N, levels·F] of points x [N,3] in [0,1]^3 (fp32, contiguous) from `grid`'s table `params` and
    layout (a `TorchHashGrid`: its resolutions, hash multipliers and level offsets)."""
    return _TritonHashGridFunction.apply(x, params, grid)
