"""Volume compositing over packed samples with segment ops (the CPU path, and the twin the Triton kernel of
`kernels/composite.py` is checked against).

Ray r's samples i (in order of t) get w_i = T_i·(1 − exp(−σ_i·Δt_i)) with T_i = exp(−Σ_{j<i} σ_j·Δt_j): the
exclusive sum per ray is a global cumulative sum minus its value at the ray's first sample, in float64 so that
subtracting the sums of all the rays before it loses nothing.
"""
from __future__ import annotations

import torch


def transmittance(sigma_dt: torch.Tensor, ray: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """T_i [N] (fp32): the light reaching each packed sample."""
    total = torch.cumsum(sigma_dt.double(), 0)
    before = total - sigma_dt.double()
    return torch.exp(-(before - before[offsets[ray]])).float()


def composite(sigma_dt: torch.Tensor, features: torch.Tensor, ray: torch.Tensor,
              offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights [N], Σ weights·features per ray [R,C], opacity [R]) for sigma_dt [N] and features [N,C] of
    samples packed by ray (ray [N] non-decreasing, offsets [R+1]); differentiable in sigma_dt and features."""
    n_rays = offsets.numel() - 1
    weights = transmittance(sigma_dt, ray, offsets) * (1 - torch.exp(-sigma_dt))
    opacity = weights.new_zeros(n_rays).index_add(0, ray, weights)
    acc = features.new_zeros(n_rays, features.shape[1]).index_add(0, ray, weights[:, None] * features)
    return weights, acc, opacity
