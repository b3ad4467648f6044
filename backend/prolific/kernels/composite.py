"""Volume compositing over packed samples as Triton kernels: `composite`, the fused twin of
`render/composite.composite` (same arguments and results).

One program per ray walks its samples in blocks, carrying the optical depth between blocks: forward writes
each sample's weight w_i = T_i·(1 − exp(−σ_iΔt_i)) and the ray's Σ w_i·f_i and Σ w_i. Backward recomputes the
transmittance and takes two passes over the ray: the first sums g_i·w_i (g_i = ∂L/∂w_i, counting the
accumulated outputs), the second gives ∂L/∂(σ_iΔt_i) = g_i·T_{i+1} − Σ_{j>i} g_j·w_j and ∂L/∂f_i = w_i·∂L/∂acc.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 64


@triton.jit
def _composite_fwd(sd_ptr, feat_ptr, off_ptr, w_ptr, acc_ptr, opac_ptr, C: tl.constexpr, CP: tl.constexpr,
                   BLOCK: tl.constexpr):
    r = tl.program_id(0)
    begin = tl.load(off_ptr + r)
    end = tl.load(off_ptr + r + 1)
    ch = tl.arange(0, CP)
    carry = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    opac = tl.zeros([BLOCK], dtype=tl.float32)
    acc = tl.zeros([CP], dtype=tl.float32)
    for start in range(begin, end, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        m = idx < end
        sd = tl.load(sd_ptr + idx, mask=m, other=0.0)
        incl = tl.cumsum(sd, axis=0)
        w = tl.exp(-(carry + incl - sd)) * (1 - tl.exp(-sd))
        tl.store(w_ptr + idx, w, mask=m)
        f = tl.load(feat_ptr + idx[:, None] * C + ch[None, :], mask=m[:, None] & (ch[None, :] < C), other=0.0)
        acc += tl.sum(w[:, None] * f, axis=0)
        opac += w
        carry += tl.sum(sd, axis=0)
    tl.store(acc_ptr + r * C + ch, acc, mask=ch < C)
    tl.store(opac_ptr + r, tl.sum(opac, axis=0))


@triton.jit
def _sample_grad(feat_ptr, gw_ptr, start, end, ch, gacc, gopac, C: tl.constexpr, BLOCK: tl.constexpr):
    """For the BLOCK samples from `start` of a ray ending at `end`: their indices, masks, and the gradient of the
    loss with respect to each sample's weight (its own, the opacity's and the accumulated features')."""
    idx = start + tl.arange(0, BLOCK)
    m = idx < end
    m2 = m[:, None] & (ch[None, :] < C)
    f = tl.load(feat_ptr + idx[:, None] * C + ch[None, :], mask=m2, other=0.0)
    g = tl.load(gw_ptr + idx, mask=m, other=0.0) + gopac + tl.sum(f * gacc[None, :], axis=1)
    return idx, m, m2, g


@triton.jit
def _composite_bwd(sd_ptr, feat_ptr, off_ptr, w_ptr, gw_ptr, gacc_ptr, gopac_ptr, gsd_ptr, gfeat_ptr,
                   C: tl.constexpr, CP: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    begin = tl.load(off_ptr + r)
    end = tl.load(off_ptr + r + 1)
    ch = tl.arange(0, CP)
    gacc = tl.load(gacc_ptr + r * C + ch, mask=ch < C, other=0.0)
    gopac = tl.load(gopac_ptr + r)
    total = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    for start in range(begin, end, BLOCK):
        idx, m, m2, g = _sample_grad(feat_ptr, gw_ptr, start, end, ch, gacc, gopac, C, BLOCK)
        total += tl.sum(g * tl.load(w_ptr + idx, mask=m, other=0.0), axis=0)
    carry = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    done = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), axis=0)
    for start in range(begin, end, BLOCK):
        idx, m, m2, g = _sample_grad(feat_ptr, gw_ptr, start, end, ch, gacc, gopac, C, BLOCK)
        w = tl.load(w_ptr + idx, mask=m, other=0.0)
        sd = tl.load(sd_ptr + idx, mask=m, other=0.0)
        gw = g * w
        after = total - (done + tl.cumsum(gw, axis=0))
        t_next = tl.exp(-(carry + tl.cumsum(sd, axis=0)))
        tl.store(gsd_ptr + idx, g * t_next - after, mask=m)
        tl.store(gfeat_ptr + idx[:, None] * C + ch[None, :], w[:, None] * gacc[None, :], mask=m2)
        done += tl.sum(gw, axis=0)
        carry += tl.sum(sd, axis=0)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigma_dt, features, offsets):
        sd, feats = sigma_dt.float().contiguous(), features.float().contiguous()
        n_rays, C = offsets.numel() - 1, feats.shape[1]
        weights = sd.new_empty(sd.shape)
        acc = sd.new_empty(n_rays, C)
        opacity = sd.new_empty(n_rays)
        if n_rays > 0:
            _composite_fwd[(n_rays,)](sd, feats, offsets, weights, acc, opacity, C=C, CP=triton.next_power_of_2(C),
                                      BLOCK=BLOCK, num_warps=2)
        ctx.save_for_backward(sd, feats, offsets, weights)
        return weights, acc, opacity

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_weights, g_acc, g_opacity):
        sd, feats, offsets, weights = ctx.saved_tensors
        n_rays, C = offsets.numel() - 1, feats.shape[1]
        g_weights = torch.zeros_like(sd) if g_weights is None else g_weights.float().contiguous()
        g_acc = sd.new_zeros(n_rays, C) if g_acc is None else g_acc.float().contiguous()
        g_opacity = sd.new_zeros(n_rays) if g_opacity is None else g_opacity.float().contiguous()
        g_sd, g_feats = torch.zeros_like(sd), torch.zeros_like(feats)
        if n_rays > 0:
            _composite_bwd[(n_rays,)](sd, feats, offsets, weights, g_weights, g_acc, g_opacity, g_sd, g_feats, C=C,
                                      CP=triton.next_power_of_2(C), BLOCK=BLOCK, num_warps=2)
        return g_sd, g_feats, None


def composite(sigma_dt: torch.Tensor, features: torch.Tensor, ray: torch.Tensor,
              offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights [N], Σ weights·features per ray [R,C], opacity [R]) for samples packed by ray (offsets [R+1];
    `ray` is not needed by the kernel and is taken for the twin's signature)."""
    return _Composite.apply(sigma_dt, features, offsets)
