"""A small ReLU MLP as fused Triton kernels: `fused_mlp`, the twin of an nn.Sequential of Linear, ReLU, ...,
Linear (field/mlp.py's `TritonMLP` calls it with its layers' weights), after tiny-cuda-nn's FullyFusedMLP.

Forward: one program takes BLOCK rows through every layer; the [BLOCK, hidden] activations stay in registers
and only the [N, out] result is written (PyTorch's layers write each [N, hidden] activation and read it back, in
the matrix products and again in the ReLUs). Backward recomputes the activations from the saved input in the
same program that propagates the gradient, so autograd keeps only the input and the weights. Widths are padded
to powers of two ≥ 16 (tl.dot's smallest shape) with masked loads: padded inputs and weights are zero, so they
add nothing.

Products are tensor-core dots with fp32 accumulation, in one of two precisions. 3xTF32 (input_precision
"tf32x3": each fp32 operand split into a TF32 value and a TF32 remainder, three products summed) has the error
of fp32 against float64 (~5e-7 of the largest output, PyTorch's fp32 layers ~3e-7); plain TF32 (~1e-3, the
10-bit mantissa of fp16) is what PyTorch's fp32 matmuls do when TF32 is allowed, and `fused_mlp` follows that
switch. Plain fp32 ("ieee") runs on FMA units with the operands replicated across threads in registers, and
measured slower than the cuBLAS layers it would replace on an H200 (Triton 3.6, 2.2M rows 32→64→64→4, PyTorch
fp32 1.8 ms forward and 3.8 ms backward: "ieee" 1.9 and 8.2 ms, tf32x3 0.5 and 3.8 ms; a throwaway sweep).

The input may also come level-major, [L, N, F] for N rows of L·F features (the hash grid's own layout,
kernels/hashgrid.py): row r's feature j is then read from [j // F, r, j % F], and the input's gradient is written
the same way, so the features are never transposed to [N, L·F] and back.

Weight gradients sum over all N rows into a few thousand entries. Atomic adds per row block would send every
block (tens of thousands) to the same addresses, serialised and in no fixed order; instead the backward grid is
persistent: PROGRAMS_PER_SM programs per multiprocessor, each looping over every P-th row block and
accumulating its dW, db in registers, then writing one partial [P, n_params] row that torch sums. The result is
deterministic, and the partials are a few MB however many rows there are.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# The products' precision (`DOT`, a constexpr of both kernels): "tf32x3" (fp32 accuracy) or "tf32" (plain TF32
# products, where PyTorch's own switch for fp32 matmuls allows TF32: `fused_mlp`).
PRECISIONS = ("tf32x3", "tf32")
# Rows per program and warps, the fastest for both precisions at 12M rows of the NeRF's 32→64→64→4 on an H200
# (bench_results/2026-12-02_h200_mlp_sweep, a diagnosis; ms forward / backward, tf32x3 and tf32): 64 rows and 4
# warps 3.1 / 23.3 and 1.6 / 6.8; the backward at 16 rows 31.6 and 8.7, at 32 rows 55.7 and 16.2 (register spills).
FORWARD_BLOCK, FORWARD_WARPS = 64, 4
BACKWARD_BLOCK, BACKWARD_WARPS = 64, 4
PROGRAMS_PER_SM = 2
# Interpreted (CPU tensors) there is no multiprocessor count: a few programs, so each still loops over blocks.
INTERPRETED_PROGRAMS = 3


@triton.jit
def _rows(ptr, block, n, DIM: tl.constexpr, PAD: tl.constexpr, BLOCK: tl.constexpr, GROUP: tl.constexpr = 0):
    """Pointers [BLOCK, PAD] to rows block·BLOCK.. of [n, DIM] values, and their mask: a row-major [n, DIM]
    tensor, or with GROUP a level-major [DIM // GROUP, n, GROUP] one."""
    rows = (block * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    cols = tl.arange(0, PAD)
    if GROUP == 0:
        offsets = rows[:, None] * DIM + cols[None, :]
    else:
        level = (cols // GROUP).to(tl.int64)
        offsets = level[None, :] * n * GROUP + rows[:, None] * GROUP + (cols % GROUP)[None, :]
    return ptr + offsets, (rows[:, None] < n) & (cols[None, :] < DIM)


@triton.jit
def _weight(w_ptr, b_ptr, N_OUT: tl.constexpr, N_IN: tl.constexpr, OUT: tl.constexpr, IN: tl.constexpr):
    """A Linear's weight [N_OUT, N_IN] and bias [N_OUT], zero-padded to [OUT, IN] and [OUT]."""
    o = tl.arange(0, OUT)
    i = tl.arange(0, IN)
    w = tl.load(w_ptr + o[:, None] * N_IN + i[None, :], mask=(o[:, None] < N_OUT) & (i[None, :] < N_IN), other=0.0)
    return w, tl.load(b_ptr + o, mask=o < N_OUT, other=0.0)


@triton.jit
def _dot(a, b, acc, DOT: tl.constexpr):
    """acc + a @ b with fp32 accumulation, the products as DOT says."""
    return tl.dot(a, b, acc, input_precision=DOT)


@triton.jit
def _linear(h, w, b, DOT: tl.constexpr):
    return _dot(h, tl.trans(w), tl.zeros([h.shape[0], w.shape[0]], dtype=tl.float32), DOT) + b[None, :]


@triton.jit
def _store_grad(part_ptr, offset, g, ROWS: tl.constexpr, COLS: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    """The [ROWS, COLS] part of a padded [R, C] gradient, row-major at part_ptr + offset."""
    r = tl.arange(0, R)
    c = tl.arange(0, C)
    tl.store(part_ptr + offset + r[:, None] * COLS + c[None, :], g, mask=(r[:, None] < ROWS) & (c[None, :] < COLS))


# The point count changes every step: left unspecialised, a count that happens to be divisible by 16 does
# not compile a second kernel mid-job (1.7-2.1 s stalls in the H200 benches before).
@triton.jit(do_not_specialize=["n"])
def _mlp_fwd(x_ptr, w_in, b_in, w_mid, b_mid, w_out, b_out, out_ptr, n, N_IN: tl.constexpr, H: tl.constexpr,
             N_OUT: tl.constexpr, IN: tl.constexpr, OUT: tl.constexpr, HIDDEN_LAYERS: tl.constexpr,
             X_GROUP: tl.constexpr, BLOCK: tl.constexpr, DOT: tl.constexpr):
    block = tl.program_id(0)
    ptrs, m = _rows(x_ptr, block, n, N_IN, IN, BLOCK, X_GROUP)
    wi, bi = _weight(w_in, b_in, H, N_IN, H, IN)
    h = tl.maximum(_linear(tl.load(ptrs, mask=m, other=0.0), wi, bi, DOT), 0.0)
    if HIDDEN_LAYERS == 2:
        wm, bm = _weight(w_mid, b_mid, H, H, H, H)
        h = tl.maximum(_linear(h, wm, bm, DOT), 0.0)
    wo, bo = _weight(w_out, b_out, N_OUT, H, OUT, H)
    ptrs, m = _rows(out_ptr, block, n, N_OUT, OUT, BLOCK)
    tl.store(ptrs, _linear(h, wo, bo, DOT), mask=m)


@triton.jit(do_not_specialize=["n", "n_blocks"])
def _mlp_bwd(x_ptr, g_ptr, w_in, b_in, w_mid, b_mid, w_out, b_out, gx_ptr, part_ptr, n, n_blocks,
             N_IN: tl.constexpr, H: tl.constexpr, N_OUT: tl.constexpr, IN: tl.constexpr, OUT: tl.constexpr,
             HIDDEN_LAYERS: tl.constexpr, WANT_X: tl.constexpr, X_GROUP: tl.constexpr, BLOCK: tl.constexpr,
             DOT: tl.constexpr):
    gwi = tl.zeros([H, IN], dtype=tl.float32)
    gbi = tl.zeros([H], dtype=tl.float32)
    gwo = tl.zeros([OUT, H], dtype=tl.float32)
    gbo = tl.zeros([OUT], dtype=tl.float32)
    # The weights once per program, not once per block of rows (the NeRF's 32→64→64→4 has 7168).
    wi, bi = _weight(w_in, b_in, H, N_IN, H, IN)
    wo, bo = _weight(w_out, b_out, N_OUT, H, OUT, H)
    if HIDDEN_LAYERS == 2:
        gwm = tl.zeros([H, H], dtype=tl.float32)
        gbm = tl.zeros([H], dtype=tl.float32)
        wm, bm = _weight(w_mid, b_mid, H, H, H, H)
    for block in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        ptrs, m = _rows(x_ptr, block, n, N_IN, IN, BLOCK, X_GROUP)
        x = tl.load(ptrs, mask=m, other=0.0)
        h1 = tl.maximum(_linear(x, wi, bi, DOT), 0.0)
        h = h1
        if HIDDEN_LAYERS == 2:
            h = tl.maximum(_linear(h1, wm, bm, DOT), 0.0)
        ptrs, m = _rows(g_ptr, block, n, N_OUT, OUT, BLOCK)
        g = tl.load(ptrs, mask=m, other=0.0)  # rows past n read 0, so they add nothing below
        gwo = _dot(tl.trans(g), h, gwo, DOT)
        gbo += tl.sum(g, axis=0)
        d = _dot(g, wo, tl.zeros([BLOCK, H], dtype=tl.float32), DOT)  # dL/dh of the last hidden layer
        if HIDDEN_LAYERS == 2:
            d = tl.where(h > 0, d, 0.0)
            gwm = _dot(tl.trans(d), h1, gwm, DOT)
            gbm += tl.sum(d, axis=0)
            d = _dot(d, wm, tl.zeros([BLOCK, H], dtype=tl.float32), DOT)
        d = tl.where(h1 > 0, d, 0.0)
        gwi = _dot(tl.trans(d), x, gwi, DOT)
        gbi += tl.sum(d, axis=0)
        if WANT_X:
            ptrs, m = _rows(gx_ptr, block, n, N_IN, IN, BLOCK, X_GROUP)
            tl.store(ptrs, _dot(d, wi, tl.zeros([BLOCK, IN], dtype=tl.float32), DOT), mask=m)
    # This program's row of the partials, laid out as the parameters are ordered: w_in, b_in, (w_mid, b_mid,)
    # w_out, b_out, each flattened.
    part = part_ptr + tl.program_id(0).to(tl.int64) * (H * N_IN + H + (H * H + H) * (HIDDEN_LAYERS - 1)
                                                       + N_OUT * H + N_OUT)
    _store_grad(part, 0, gwi, H, N_IN, H, IN)
    _store_grad(part, H * N_IN, gbi[None, :], 1, H, 1, H)
    offset = H * N_IN + H
    if HIDDEN_LAYERS == 2:
        _store_grad(part, offset, gwm, H, H, H, H)
        _store_grad(part, offset + H * H, gbm[None, :], 1, H, 1, H)
        offset += H * H + H
    _store_grad(part, offset, gwo, N_OUT, H, OUT, H)
    _store_grad(part, offset + N_OUT * H, gbo[None, :], 1, N_OUT, 1, OUT)


def _pad(width: int) -> int:
    return max(16, triton.next_power_of_2(width))


def _rows_of(x: torch.Tensor) -> int:
    """The number of rows of an input [N, in] or a level-major one [L, N, F]."""
    return x.shape[1] if x.dim() == 3 else x.shape[0]


def _shapes(x: torch.Tensor, params) -> dict:
    """The kernels' constexprs for input x ([N, in], or level-major [L, N, F]) and the parameters (w_in, b_in,
    [w_mid, b_mid,] w_out, b_out)."""
    n_in, n_out = params[0].shape[1], params[-2].shape[0]
    return dict(N_IN=n_in, H=params[0].shape[0], N_OUT=n_out, IN=_pad(n_in), OUT=_pad(n_out),
                HIDDEN_LAYERS=len(params) // 2 - 1, X_GROUP=x.shape[2] if x.dim() == 3 else 0)


def _programs(x: torch.Tensor, n_blocks: int, per_sm: int = PROGRAMS_PER_SM) -> int:
    if x.is_cuda:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count
        return min(n_blocks, sms * per_sm)
    return min(n_blocks, INTERPRETED_PROGRAMS)


def _layers(params) -> tuple:
    """The kernels' weight arguments w_in, b_in, w_mid, b_mid, w_out, b_out; with one hidden layer the middle
    pair repeats the last (never read)."""
    return tuple(params) if len(params) == 6 else (*params, *params[-2:])


def mlp_forward(x: torch.Tensor, params, dot: str, block: int = FORWARD_BLOCK,
                warps: int = FORWARD_WARPS) -> torch.Tensor:
    """The forward kernel's y [N, out] for contiguous x and params (other tilings and precisions: sweeps)."""
    shapes = _shapes(x, params)
    n = _rows_of(x)
    out = x.new_empty(n, shapes["N_OUT"])
    if n > 0:  # an empty launch grid is not a valid CUDA launch
        _mlp_fwd[(triton.cdiv(n, block),)](x, *_layers(params), out, n, **shapes, BLOCK=block, DOT=dot,
                                           num_warps=warps)
    return out


def mlp_backward(x: torch.Tensor, grad_out: torch.Tensor, params, want_x: bool, dot: str,
                 block: int = BACKWARD_BLOCK, warps: int = BACKWARD_WARPS, per_sm: int = PROGRAMS_PER_SM) -> tuple:
    """The backward kernel's (dL/dx or None, dL/dparams...) for contiguous x and params."""
    n = _rows_of(x)
    grad_x = torch.empty_like(x) if want_x else None
    if n == 0:
        return (grad_x, *(torch.zeros_like(p) for p in params))
    n_blocks = triton.cdiv(n, block)
    n_programs = _programs(x, n_blocks, per_sm)
    part = x.new_empty(n_programs, sum(p.numel() for p in params))
    _mlp_bwd[(n_programs,)](x, grad_out.float().contiguous(), *_layers(params), grad_x if want_x else x, part, n,
                            n_blocks, **_shapes(x, params), WANT_X=want_x, BLOCK=block, DOT=dot, num_warps=warps)
    grads = part.sum(0).split([p.numel() for p in params])
    return (grad_x, *(g.view_as(p) for g, p in zip(grads, params)))


class _FusedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, replay, dot, *params):
        x = x.contiguous()
        params = tuple(p.contiguous() for p in params)
        ctx.save_for_backward(x, *params)
        ctx.dot = dot
        # The backward recomputes from x alone, so a replay's outputs serve.
        return replay if replay is not None else mlp_forward(x, params, dot)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        grad_x, *grads = mlp_backward(x, grad_out, params, ctx.needs_input_grad[0], ctx.dot)
        return (grad_x, None, None, *grads)


def fused_mlp(x: torch.Tensor, params, replay: torch.Tensor | None = None, exact: bool = False) -> torch.Tensor:
    """y [N, out] for rows x [N, in] (fp32) through Linear, ReLU, ..., Linear with `params` = (weight, bias) of
    each Linear in order: 1 or 2 hidden layers of one width (a power of two, 16-64), in ≤ 64, out ≤ 16. x may
    be level-major, [L, N, F] with L·F = in (its gradient then comes in that shape too).

    The products are TF32 where PyTorch's switch for fp32 matmuls allows it (torch.backends.cuda.matmul.
    allow_tf32, as nn.Linear's are; a job's `tf32` speed option sets it), else 3xTF32; `exact` asks for 3xTF32
    regardless. `replay`: y as an earlier call without gradients computed it from the same x and params (and
    switch); it is returned as the output (no forward kernel runs) and the backward is the usual one."""
    width = x.shape[0] * x.shape[2] if x.dim() == 3 else x.shape[1]
    if width != params[0].shape[1]:
        raise ValueError(f"Features {tuple(x.shape)} do not give the MLP's {params[0].shape[1]} inputs.")
    dot = "tf32" if torch.backends.cuda.matmul.allow_tf32 and not exact else "tf32x3"
    return _FusedMLP.apply(x, replay, dot, *params)
