"""A LoRA branch as Triton kernels: `lora_delta`, y + s·((x·Aᵀ)·Bᵀ) for the output y of a frozen linear layer,
with the low-rank products in fp32 as peft computes them (its layers cast x to the fp32 LoRA weights): one kernel
per product instead of peft's cast, two matmuls, scale, mixed-dtype add and cast back, each over the whole
activation.

The VSD estimator puts a rank-4 LoRA on every attention projection of the UNet (128 layers in SD 2.1): in the
captured UNet calls of a stage-1 step those small kernels and cuBLAS's split-K reductions for the skinny
products took ~7 ms of GPU time per step (issue 12's profile). Here the forward is two kernels (h = x·Aᵀ over row
blocks; y += s·h·Bᵀ over tiles, in place: the branch needs no copy of the layer's output) and the backward two
more, each one pass over its big operand: over the output's gradient g for ∂h = s·g·B and the per-block partial
sums of ∂B = s·gᵀ·h, then over x for the partial sums of ∂A = ∂hᵀ·x and ∂x = ∂h·A. A per-sample gate zeroes h
(and ∂h) on the rows of masked-off samples, as `LoraSampleGate` zeroes their LoRA input; the forward neither
reads nor writes their rows (the batched VSD call gates off two pretrained samples of three). The rank is padded
to 16 (tl.dot's smallest shape) with masked loads.
Products are tensor-core dots with fp32 accumulation: TF32 where PyTorch's TF32 switch for matmuls is on (as
peft's fp32 nn.Linear then runs), else 3xTF32 (fp32 accuracy, as without it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BM, BN = 32, 64  # rows per program; output columns (forward) / reduced columns (backward) per tile
MAX_RANK = 64


@triton.jit
def _kept(keep_ptr, rows, m, rows_per_sample, HAS_GATE: tl.constexpr):
    """Whether each row takes the LoRA branch (its sample's gate entry; every valid row without a gate)."""
    if HAS_GATE:
        return m & (tl.load(keep_ptr + rows // rows_per_sample, mask=m, other=0) != 0)
    return m


@triton.jit
def _any(keep):
    """Whether any row of the block takes the branch (a block of gated-off rows reads and writes nothing)."""
    return tl.max(keep.to(tl.int32), axis=0) > 0


@triton.jit(do_not_specialize=["M", "rows_per_sample"])
def _down(x_ptr, a_ptr, keep_ptr, h_ptr, M, K, rows_per_sample, R: tl.constexpr, RP: tl.constexpr,
          BM: tl.constexpr, BK: tl.constexpr, HAS_GATE: tl.constexpr, DOT: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    m = rows < M
    r = tl.arange(0, RP)
    keep = _kept(keep_ptr, rows, m, rows_per_sample, HAS_GATE)
    acc = tl.zeros([BM, RP], dtype=tl.float32)
    if _any(keep):
        for k0 in range(0, K, BK):
            k = k0 + tl.arange(0, BK)
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + k[None, :], mask=keep[:, None] & (k[None, :] < K),
                        other=0.0).to(tl.float32)
            at = tl.load(a_ptr + r[None, :] * K + k[:, None], mask=(r[None, :] < R) & (k[:, None] < K), other=0.0)
            acc = tl.dot(x, at, acc, input_precision=DOT)
    tl.store(h_ptr + rows[:, None] * R + r[None, :], acc, mask=m[:, None] & (r[None, :] < R))


@triton.jit(do_not_specialize=["M", "rows_per_sample"])
def _up(y_ptr, h_ptr, b_ptr, keep_ptr, M, N, scaling, rows_per_sample, R: tl.constexpr, RP: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, HAS_GATE: tl.constexpr, DOT: tl.constexpr):
    # y += scaling·h·Bᵀ in place, on the rows that take the branch (the others' delta is zero).
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    m = rows < M
    keep = _kept(keep_ptr, rows, m, rows_per_sample, HAS_GATE)
    if _any(keep):
        cols = tl.program_id(1) * BN + tl.arange(0, BN)
        c = cols < N
        r = tl.arange(0, RP)
        h = tl.load(h_ptr + rows[:, None] * R + r[None, :], mask=keep[:, None] & (r[None, :] < R), other=0.0)
        bt = tl.load(b_ptr + cols[None, :] * R + r[:, None], mask=(r[:, None] < R) & c[None, :], other=0.0)
        delta = tl.dot(h, bt, input_precision=DOT)
        at = rows[:, None].to(tl.int64) * N + cols[None, :]
        mask = keep[:, None] & c[None, :]
        y = tl.load(y_ptr + at, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + at, (y + scaling * delta).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M", "rows_per_sample"])
def _bwd_h(g_ptr, b_ptr, h_ptr, keep_ptr, dh_ptr, db_part_ptr, M, N, scaling, rows_per_sample, R: tl.constexpr,
           RP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, HAS_GATE: tl.constexpr, DOT: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    m = rows < M
    r = tl.arange(0, RP)
    h = tl.load(h_ptr + rows[:, None] * R + r[None, :], mask=m[:, None] & (r[None, :] < R), other=0.0)
    dh = tl.zeros([BM, RP], dtype=tl.float32)
    for n0 in range(0, N, BN):
        n = n0 + tl.arange(0, BN)
        g = tl.load(g_ptr + rows[:, None].to(tl.int64) * N + n[None, :], mask=m[:, None] & (n[None, :] < N),
                    other=0.0).to(tl.float32)
        b = tl.load(b_ptr + n[:, None] * R + r[None, :], mask=(n[:, None] < N) & (r[None, :] < R), other=0.0)
        dh = tl.dot(g, b, dh, input_precision=DOT)
        db = tl.dot(tl.trans(g), h, input_precision=DOT) * scaling  # this block's share of ∂B [BN, RP]
        tl.store(db_part_ptr + (pid.to(tl.int64) * N + n[:, None]) * R + r[None, :], db,
                 mask=(n[:, None] < N) & (r[None, :] < R))
    keep = _kept(keep_ptr, rows, m, rows_per_sample, HAS_GATE)
    dh = tl.where(keep[:, None], dh * scaling, 0.0)
    tl.store(dh_ptr + rows[:, None] * R + r[None, :], dh, mask=m[:, None] & (r[None, :] < R))


@triton.jit(do_not_specialize=["M"])
def _bwd_x(x_ptr, a_ptr, dh_ptr, da_part_ptr, dx_ptr, M, K, R: tl.constexpr, RP: tl.constexpr, BM: tl.constexpr,
           BK: tl.constexpr, WANT_X: tl.constexpr, DOT: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BM + tl.arange(0, BM)
    m = rows < M
    r = tl.arange(0, RP)
    dh = tl.load(dh_ptr + rows[:, None] * R + r[None, :], mask=m[:, None] & (r[None, :] < R), other=0.0)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        mk = m[:, None] & (k[None, :] < K)
        at = rows[:, None].to(tl.int64) * K + k[None, :]
        x = tl.load(x_ptr + at, mask=mk, other=0.0).to(tl.float32)
        da = tl.dot(tl.trans(dh), x, input_precision=DOT)  # this block's share of ∂A [RP, BK]
        tl.store(da_part_ptr + (pid.to(tl.int64) * R + r[:, None]) * K + k[None, :], da,
                 mask=(r[:, None] < R) & (k[None, :] < K))
        if WANT_X:
            a = tl.load(a_ptr + r[:, None] * K + k[None, :], mask=(r[:, None] < R) & (k[None, :] < K), other=0.0)
            dx = tl.dot(dh, a, input_precision=DOT)
            tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=mk)


def _dot() -> str:
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3"


def _padded(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))


class _LoraDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, a, b, scaling: float, keep):
        K, N, R = x.shape[-1], y.shape[-1], a.shape[0]
        x2, y2 = x.reshape(-1, K).contiguous(), y.view(-1, N)
        M = x2.shape[0]
        rows_per_sample = M // keep.numel() if keep is not None else 1
        gate = keep.to(torch.int8) if keep is not None else x2.new_empty(0, dtype=torch.int8)
        h = torch.empty(M, R, dtype=torch.float32, device=x.device)
        dot, rp = _dot(), _padded(R)
        if M > 0:  # an empty launch grid is not a valid CUDA launch
            _down[(triton.cdiv(M, BM),)](x2, a, gate, h, M, K, rows_per_sample, R=R, RP=rp, BM=BM, BK=BN,
                                        HAS_GATE=keep is not None, DOT=dot)
            _up[(triton.cdiv(M, BM), triton.cdiv(N, BN))](y2, h, b, gate, M, N, scaling, rows_per_sample, R=R, RP=rp,
                                                          BM=BM, BN=BN, HAS_GATE=keep is not None, DOT=dot)
        ctx.mark_dirty(y)
        ctx.save_for_backward(x2, a, b, h, gate)
        ctx.scaling, ctx.rows_per_sample, ctx.gated, ctx.dot, ctx.x_shape = (scaling, rows_per_sample,
                                                                            keep is not None, dot, x.shape)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x2, a, b, h, gate = ctx.saved_tensors
        (M, K), N, R = x2.shape, b.shape[0], a.shape[0]
        rp, want_x = _padded(R), ctx.needs_input_grad[1]
        g = grad_out.reshape(-1, N).contiguous()
        blocks = triton.cdiv(M, BM)
        dh = torch.empty(M, R, dtype=torch.float32, device=g.device)
        parts = torch.empty if M > 0 else torch.zeros  # every program writes its whole share
        db_part = parts(max(blocks, 1), N, R, dtype=torch.float32, device=g.device)
        da_part = parts(max(blocks, 1), R, K, dtype=torch.float32, device=g.device)
        dx = torch.empty_like(x2) if want_x else x2.new_empty(0)
        if M > 0:
            _bwd_h[(blocks,)](g, b, h, gate, dh, db_part, M, N, ctx.scaling, ctx.rows_per_sample, R=R, RP=rp, BM=BM,
                              BN=BN, HAS_GATE=ctx.gated, DOT=ctx.dot)
            _bwd_x[(blocks,)](x2, a, dh, da_part, dx, M, K, R=R, RP=rp, BM=BM, BK=BN, WANT_X=want_x, DOT=ctx.dot)
        elif want_x:
            dx.zero_()
        return (grad_out, dx.view(ctx.x_shape) if want_x else None, da_part.sum(0), db_part.sum(0), None,
                None)


def lora_delta(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
               keep: torch.Tensor | None = None) -> torch.Tensor:
    """y + scaling·((x·aᵀ)·bᵀ) in y's dtype, written into y (a contiguous linear layer's output [..., N] at x
    [..., K], which nothing else holds) and returned; the low-rank products in fp32, a [R, K] and b [N, R] the
    LoRA's fp32 weights (R ≤ MAX_RANK). `keep` [S] (bool), when given, leaves y unchanged on the rows of the
    samples it marks False (x's rows split evenly over S samples), and the kernels neither read nor write those
    rows. Differentiable in y, x, a and b."""
    refusal = unsupported(a, b)
    if refusal:
        raise ValueError(refusal)
    if not y.is_contiguous():
        raise ValueError("lora_delta writes into y: it takes a contiguous tensor.")
    return _LoraDelta.apply(y, x, a, b, float(scaling), keep)


def unsupported(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """Why the kernels cannot compute a LoRA of weights a, b (a sentence), or None when they can."""
    if a.shape[0] > MAX_RANK:
        return f"The LoRA kernels take ranks up to {MAX_RANK}, not {a.shape[0]}."
    if a.dtype != torch.float32 or b.dtype != torch.float32:  # peft computes in the weights' dtype
        return f"The LoRA kernels take fp32 LoRA weights, not {a.dtype} and {b.dtype}."
    return None
