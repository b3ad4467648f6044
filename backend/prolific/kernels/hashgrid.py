"""The multiresolution hash encoding as Triton kernels: `hash_encode`, the fused lookup of a `TorchHashGrid`'s
table (field/hashgrid.py's `TritonHashGrid` calls it; same levels, hashing, table and initialisation, so
state_dicts load in either).

One program takes BLOCK points through one level, and the launch grid runs level by level, as torch-ngp's
gridencoder does: the GPU works on one level's slice of the table at a time (2^19 rows × F features, a few MB),
which stays in L2, where taking every level at once (64 MB for the standard grid) would miss it on most
gathers. Features and their gradients are laid out level-major [L, N, F] inside, so each level's reads and
writes are contiguous; the one transposition to [N, L·F] is a plain copy, which the fused MLP's callers skip by
taking the features level-major (kernels/mlp.py reads that layout). Each thread owns a point: its 8
corners' rows are computed once in registers (dense index or the spatial hash, exactly as
`TorchHashGrid.corners`; in uint32, which wraps mod 2^32 and so agrees with its int64 products once masked to
the table). With the standard 2 features a row is one 8-byte word, fetched (and its gradient stored) in one
access, as `gather_rows` does on a CPU; other feature counts go feature by feature.

Backward recomputes the corners. The table's gradient is scattered with relaxed fp32 atomic adds (the table is
stored in fp32: Adam's updates of 1e-2·lr scale vanish in fp16/bf16, and so would small gradient sums
accumulated in them), a row's two features at once where the GPU has vector atomics (sm_90), and with the
grid's pair_rows two rows at once where they are an aligned pair (`_add_rows`). A render's samples come ray by ray, so on coarse levels runs
of consecutive points share a cell, and every one of them adding to the same 8 rows serialises on those
addresses: with two features, on the levels up to the grid's merge_max_res, a segmented sum over each run first
leaves one atomic add per run and corner. The points' gradient, only when a caller asks for it, is the
derivative of the trilinear weights, written per level and summed over levels afterwards.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


BLOCK = 128
FORWARD_WARPS, BACKWARD_WARPS = 4, 4  # one point per thread


@triton.jit
def _cell(x_ptr, idx, m, res):
    """Cell (b0, b1, b2) of points idx at `res` cells per axis (x = 1 lies in the last one) and the fractions."""
    resf = res.to(tl.float32)
    p0 = resf * tl.load(x_ptr + idx * 3, mask=m, other=0.0)
    p1 = resf * tl.load(x_ptr + idx * 3 + 1, mask=m, other=0.0)
    p2 = resf * tl.load(x_ptr + idx * 3 + 2, mask=m, other=0.0)
    b0 = tl.minimum(tl.floor(p0).to(tl.int32), res - 1)
    b1 = tl.minimum(tl.floor(p1).to(tl.int32), res - 1)
    b2 = tl.minimum(tl.floor(p2).to(tl.int32), res - 1)
    return b0, b1, b2, p0 - b0.to(tl.float32), p1 - b1.to(tl.float32), p2 - b2.to(tl.float32)


@triton.jit
def _axis(b, mult_ptr, axis, table_mask):
    """One axis' lower and upper vertex coordinate times the level's multiplier, masked to the table."""
    mult = tl.load(mult_ptr + axis).to(tl.uint32)
    return (b.to(tl.uint32) * mult) & table_mask, ((b + 1).to(tl.uint32) * mult) & table_mask


@triton.jit
def _corner(c: tl.constexpr, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, f0, f1, f2, is_dense, offset):
    """Corner c (0-7, bits x y z) of each point's cell: its trilinear weight factors and its table row."""
    wx = f0 if (c >> 2) & 1 == 1 else 1 - f0
    wy = f1 if (c >> 1) & 1 == 1 else 1 - f1
    wz = f2 if c & 1 == 1 else 1 - f2
    tx = x_hi if (c >> 2) & 1 == 1 else x_lo
    ty = y_hi if (c >> 1) & 1 == 1 else y_lo
    tz = z_hi if c & 1 == 1 else z_lo
    row = tl.where(is_dense, tx + ty + tz, tx ^ ty ^ tz)
    return wx, wy, wz, row.to(tl.int32) + offset


@triton.jit
def _low(word):
    return word.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _high(word):
    return (word >> 32).to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _word(a, b):
    """Two fp32 values as one 8-byte word, a in the low half (the layout of a row of 2 features)."""
    return (a.to(tl.int32, bitcast=True).to(tl.int64) & 0xFFFFFFFF) | (b.to(tl.int32, bitcast=True).to(tl.int64) << 32)


@triton.jit
def _setup(x_ptr, res_ptr, mult_ptr, off_ptr, n, n_dense, table_mask, BLOCK: tl.constexpr):
    level = tl.program_id(1)
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = idx < n
    res = tl.load(res_ptr + level)
    b0, b1, b2, f0, f1, f2 = _cell(x_ptr, idx, m, res)
    mask_u = table_mask.to(tl.uint32)
    x_lo, x_hi = _axis(b0, mult_ptr, level * 3, mask_u)
    y_lo, y_hi = _axis(b1, mult_ptr, level * 3 + 1, mask_u)
    z_lo, z_hi = _axis(b2, mult_ptr, level * 3 + 2, mask_u)
    return (level, idx, m, res, b0, b1, b2, f0, f1, f2, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, level < n_dense,
            tl.load(off_ptr + level))


# The point count changes every step: left unspecialised, a count that happens to be divisible by 16 does
# not compile a second kernel mid-job (1.7-2.1 s stalls in the H200 benches before).
@triton.jit(do_not_specialize=["n"])
def _hashgrid_fwd(x_ptr, params_ptr, out_ptr, res_ptr, mult_ptr, off_ptr, n, n_dense, table_mask,
                  F: tl.constexpr, FP: tl.constexpr, BLOCK: tl.constexpr):
    (level, idx, m, res, b0, b1, b2, f0, f1, f2, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, is_dense,
     offset) = _setup(x_ptr, res_ptr, mult_ptr, off_ptr, n, n_dense, table_mask, BLOCK)
    at = level.to(tl.int64) * n + idx
    if F == 2:  # params_ptr and out_ptr are the tables viewed as 8-byte words
        a0 = tl.zeros([BLOCK], dtype=tl.float32)
        a1 = tl.zeros([BLOCK], dtype=tl.float32)
        for c in tl.static_range(8):
            wx, wy, wz, row = _corner(c, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, f0, f1, f2, is_dense, offset)
            word = tl.load(params_ptr + row, mask=m, other=0)
            w = wx * wy * wz
            a0 += w * _low(word)
            a1 += w * _high(word)
        tl.store(out_ptr + at, _word(a0, a1), mask=m)
    else:
        feat = tl.arange(0, FP)
        m2 = m[:, None] & (feat[None, :] < F)
        acc = tl.zeros([BLOCK, FP], dtype=tl.float32)
        for c in tl.static_range(8):
            wx, wy, wz, row = _corner(c, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, f0, f1, f2, is_dense, offset)
            vals = tl.load(params_ptr + row[:, None] * F + feat[None, :], mask=m2, other=0.0)
            acc += (wx * wy * wz)[:, None] * vals
        tl.store(out_ptr + at[:, None] * F + feat[None, :], acc, mask=m2)


@triton.jit
def _segment_sum(start_a, a0, a1, a2, a3, start_b, b0, b1, b2, b3):
    """Combine of a segmented inclusive sum of four values: a run restarts where an element starts one."""
    restart = start_b != 0
    return (start_a | start_b, tl.where(restart, b0, a0 + b0), tl.where(restart, b1, a1 + b1),
            tl.where(restart, b2, a2 + b2), tl.where(restart, b3, a3 + b3))


@triton.jit
def _runs(x_ptr, idx, m, n, res, b0, b1, b2, BLOCK: tl.constexpr):
    """Runs of consecutive points of this block in the same cell: whether each point starts one (int32) and
    whether it ends one."""
    lane = tl.arange(0, BLOCK)
    p0, p1, p2, _, _, _ = _cell(x_ptr, idx - 1, m & (idx > 0), res)
    q0, q1, q2, _, _, _ = _cell(x_ptr, idx + 1, idx + 1 < n, res)
    start = (lane == 0) | (p0 != b0) | (p1 != b1) | (p2 != b2)
    end = (lane == BLOCK - 1) | (idx + 1 >= n) | (q0 != b0) | (q1 != b1) | (q2 != b2)
    return start.to(tl.int32), end


@triton.jit
def _add_rows(grad_ptr, row_a, row_b, a0, a1, b0, b1, mask, VECTOR: tl.constexpr, PAIRS: tl.constexpr):
    """(a0, a1) added atomically to the two-feature row row_a of grad_ptr (fp32) and (b0, b1) to row_b (relaxed,
    where mask). With sm_90's vector atomics one 8-byte add per row, and with PAIRS one 16-byte add where the two
    rows are a 16-byte aligned pair (an even row and the next: a hashed level's x_lo, x_hi rows of an even cell,
    as the hash's x multiplier is 1), which halves their atomics. PAIRS orders each pair (row_a the even row)
    on any GPU, so the CPU's interpreted kernel checks that much of it."""
    paired = tl.zeros_like(row_a) != 0  # without PAIRS no two rows are added at once
    if PAIRS:
        swap = (row_a == row_b + 1) & ((row_b & 1) == 0)  # the pair the other way round
        paired = swap | ((row_b == row_a + 1) & ((row_a & 1) == 0))
        row_a, row_b = tl.where(swap, row_b, row_a), tl.where(swap, row_a, row_b)
        a0, a1, b0, b1 = tl.where(swap, b0, a0), tl.where(swap, b1, a1), tl.where(swap, a0, b0), tl.where(swap, a1, b1)
    if VECTOR:
        tl.inline_asm_elementwise(
            "{ .reg .pred m, p, q; setp.ne.b32 m, $7, 0; setp.ne.b32 p, $8, 0; and.pred q, m, p; not.pred p, p; "
            "and.pred m, m, p; @q red.relaxed.gpu.global.add.v4.f32 [$1], {$3, $4, $5, $6}; "
            "@m red.relaxed.gpu.global.add.v2.f32 [$1], {$3, $4}; @m red.relaxed.gpu.global.add.v2.f32 [$2], {$5, $6}; "
            "mov.b32 $0, 0; }", "=r,l,l,f,f,f,f,r,r",
            [(grad_ptr + row_a * 2).to(tl.int64), (grad_ptr + row_b * 2).to(tl.int64), a0, a1, b0, b1,
             mask.to(tl.int32), paired.to(tl.int32)], dtype=tl.int32, is_pure=False, pack=1)
    else:
        tl.atomic_add(grad_ptr + row_a * 2, a0, mask=mask, sem="relaxed")
        tl.atomic_add(grad_ptr + row_a * 2 + 1, a1, mask=mask, sem="relaxed")
        tl.atomic_add(grad_ptr + row_b * 2, b0, mask=mask, sem="relaxed")
        tl.atomic_add(grad_ptr + row_b * 2 + 1, b1, mask=mask, sem="relaxed")


@triton.jit(do_not_specialize=["n"])
def _hashgrid_bwd(x_ptr, params_ptr, grad_out_ptr, grad_params_ptr, grad_x_ptr, res_ptr, mult_ptr, off_ptr, n,
                  n_dense, n_merge, table_mask, F: tl.constexpr, FP: tl.constexpr, WANT_PARAMS: tl.constexpr,
                  WANT_X: tl.constexpr, VECTOR: tl.constexpr, PAIRS: tl.constexpr, BLOCK: tl.constexpr):
    (level, idx, m, res, b0, b1, b2, f0, f1, f2, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, is_dense,
     offset) = _setup(x_ptr, res_ptr, mult_ptr, off_ptr, n, n_dense, table_mask, BLOCK)
    at = level.to(tl.int64) * n + idx
    resf = res.to(tl.float32)
    gx0 = tl.zeros([BLOCK], dtype=tl.float32)
    gx1 = tl.zeros([BLOCK], dtype=tl.float32)
    gx2 = tl.zeros([BLOCK], dtype=tl.float32)
    merge = level < n_merge
    start = tl.zeros([BLOCK], dtype=tl.int32)
    keep = m
    if WANT_PARAMS and F == 2:  # the runs' sums are taken on two-feature rows
        if merge:
            start, end = _runs(x_ptr, idx, m, n, res, b0, b1, b2, BLOCK)
            keep = m & end
    if F == 2:  # params_ptr and grad_out_ptr are viewed as 8-byte words; grad_params_ptr is fp32
        g = tl.load(grad_out_ptr + at, mask=m, other=0)
        g0, g1 = _low(g), _high(g)
        for yz in tl.static_range(4):  # the corners at x_lo and x_hi of each y, z: rows the hash keeps adjacent
            wxa, wy, wz, row_a = _corner(yz, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, f0, f1, f2, is_dense, offset)
            wxb, _, _, row_b = _corner(yz + 4, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, f0, f1, f2, is_dense, offset)
            if WANT_PARAMS:
                wa, wb = wxa * wy * wz, wxb * wy * wz
                a0, a1, b0, b1 = wa * g0, wa * g1, wb * g0, wb * g1
                if merge:
                    summed = tl.associative_scan((start, a0, a1, b0, b1), 0, _segment_sum)
                    a0, a1, b0, b1 = summed[1], summed[2], summed[3], summed[4]
                _add_rows(grad_params_ptr, row_a, row_b, a0, a1, b0, b1, keep, VECTOR, PAIRS)
            if WANT_X:
                for x_bit in tl.static_range(2):
                    c = yz + 4 * x_bit
                    wx, row = (wxb, row_b) if x_bit == 1 else (wxa, row_a)
                    word = tl.load(params_ptr + row, mask=m, other=0)
                    per_corner = (g0 * _low(word) + g1 * _high(word)) * resf
                    # d(weight)/dx of the corner: +1 or -1 (its x bit) times the other two factors; likewise y, z.
                    gx0 += (2 * ((c >> 2) & 1) - 1) * (wy * wz) * per_corner
                    gx1 += (2 * ((c >> 1) & 1) - 1) * (wx * wz) * per_corner
                    gx2 += (2 * (c & 1) - 1) * (wx * wy) * per_corner
    else:
        feat = tl.arange(0, FP)
        m2 = m[:, None] & (feat[None, :] < F)
        g = tl.load(grad_out_ptr + at[:, None] * F + feat[None, :], mask=m2, other=0.0)
        for c in tl.static_range(8):
            wx, wy, wz, row = _corner(c, x_lo, x_hi, y_lo, y_hi, z_lo, z_hi, f0, f1, f2, is_dense, offset)
            ptr = row[:, None] * F + feat[None, :]
            if WANT_PARAMS:
                tl.atomic_add(grad_params_ptr + ptr, (wx * wy * wz)[:, None] * g, mask=m2, sem="relaxed")
            if WANT_X:
                per_corner = tl.sum(g * tl.load(params_ptr + ptr, mask=m2, other=0.0), axis=1) * resf
                gx0 += (2 * ((c >> 2) & 1) - 1) * (wy * wz) * per_corner
                gx1 += (2 * ((c >> 1) & 1) - 1) * (wx * wz) * per_corner
                gx2 += (2 * (c & 1) - 1) * (wx * wy) * per_corner
    if WANT_X:  # this level's share [L, N, 3], summed over levels by the caller
        tl.store(grad_x_ptr + at * 3, gx0, mask=m)
        tl.store(grad_x_ptr + at * 3 + 1, gx1, mask=m)
        tl.store(grad_x_ptr + at * 3 + 2, gx2, mask=m)


def _layout(grid) -> tuple:
    res = grid._res.int().contiguous()
    n_merge = sum(r <= grid.merge_max_res for r in grid.resolutions)  # resolutions grow with the level
    return res, grid._mult.contiguous(), grid._offsets.contiguous(), n_merge


def _words(t: torch.Tensor, F: int) -> torch.Tensor:
    """A contiguous fp32 [.., F] tensor as the kernels read it: 8-byte words when F == 2."""
    return t.view(torch.int64) if F == 2 else t


def _vector_atomics(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


class _TritonHashGridFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, grid, level_major, replay):
        ctx.grid = grid
        ctx.save_for_backward(x, params)
        if replay is not None:  # the backward recomputes the corners from x alone
            return replay
        n, L, F = x.shape[0], grid.n_levels, grid.n_features
        out = x.new_empty(L, n, F)
        if n > 0:  # an empty launch grid is not a valid CUDA launch
            res, mult, off, _ = _layout(grid)
            _hashgrid_fwd[(triton.cdiv(n, BLOCK), L)](x, _words(params, F), _words(out, F), res, mult, off, n,
                                                      grid.n_dense, grid._mask, F=F, FP=triton.next_power_of_2(F),
                                                      BLOCK=BLOCK, num_warps=FORWARD_WARPS)
        return out if level_major else out.permute(1, 0, 2).reshape(n, L * F)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, params = ctx.saved_tensors
        grid = ctx.grid
        want_x, want_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, L, F = x.shape[0], grid.n_levels, grid.n_features
        grad_x = x.new_empty(L, n, 3) if want_x else x.new_empty(0)
        # A fresh allocation: 16-byte aligned, as pair_rows' vector atomics need.
        grad_params = torch.zeros_like(params) if want_params else params.new_empty(0)
        if n > 0 and (want_x or want_params):
            res, mult, off, n_merge = _layout(grid)
            g = grad_out.float()  # level-major, as the kernel reads
            g = (g if g.dim() == 3 else g.reshape(n, L, F).permute(1, 0, 2)).contiguous()
            _hashgrid_bwd[(triton.cdiv(n, BLOCK), L)](x, _words(params, F), _words(g, F), grad_params, grad_x, res,
                                                      mult, off, n, grid.n_dense, n_merge, grid._mask, F=F,
                                                      FP=triton.next_power_of_2(F), WANT_PARAMS=want_params,
                                                      WANT_X=want_x, VECTOR=_vector_atomics(x.device),
                                                      PAIRS=grid.pair_rows, BLOCK=BLOCK, num_warps=BACKWARD_WARPS)
        return grad_x.sum(0) if want_x else None, grad_params if want_params else None, None, None, None


def hash_encode(x: torch.Tensor, params: torch.Tensor, grid, level_major: bool = False,
                replay: torch.Tensor | None = None) -> torch.Tensor:
    """Features [N, levels·F] of points x [N,3] in [0,1]^3 (fp32, contiguous) from `grid`'s table `params` and
    layout (a `TorchHashGrid`: its resolutions, hash multipliers and level offsets); level-major [levels, N, F]
    with `level_major`, as the kernels lay them out (the fused MLP reads them so). `replay`: those features as
    an earlier call without gradients computed them at x, returned without running the forward kernel."""
    return _TritonHashGridFunction.apply(x, params, grid, level_major, replay)
