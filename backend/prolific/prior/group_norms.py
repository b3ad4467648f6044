"""The `vae-norm` and `unet-norm` speed options: the VAE's / the UNet's GroupNorm layers run kernels/group_norm.py's
Triton kernels (PyTorch's leave most of the GPU idle on the VAE's million-value groups at 512 px, and convert the
channels-last UNet's activations to NCHW and back around every norm).

`TritonGroupNorm` is an `nn.GroupNorm` (the same weight and bias Parameters, the same state_dict keys) whose
forward goes through the kernels where they apply — a CUDA input whose pixels make one strided run (NCHW,
channels-last, or attention's transposed tokens) and a weight and bias that take no gradient, as in the frozen
VAE and UNet (LoRA trains the attention projections only) — and through nn.GroupNorm's own forward otherwise.
The resnet blocks' SiLU fused into these kernels measured no faster: stage 1 at 512 px 96.4 vs 95.8 ms (blob),
59.0 vs 59.4 (solid ball), stage 3 41.4 vs 42.3, side by side on an H100 (bench_results/2026-12-08_h100_unet_layout/).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .module_swaps import replaced, view_as


class TritonGroupNorm(nn.GroupNorm):
    def kernels_apply(self, x: torch.Tensor) -> bool:
        """Whether forward(x) runs the Triton kernels (else nn.GroupNorm's forward)."""
        wants_param_grad = torch.is_grad_enabled() and (self.weight.requires_grad or self.bias.requires_grad)
        if not (self.affine and x.is_cuda and x.numel() > 0) or wants_param_grad:
            return False
        from ..kernels.group_norm import flat_strides

        return flat_strides(x) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kernels_apply(x):
            return super().forward(x)
        from ..kernels.group_norm import group_norm

        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def triton_group_norms(module: nn.Module):
    """Every nn.GroupNorm inside `module` replaced by a TritonGroupNorm view of it (its own weight and bias:
    module_swaps.view_as) while inside (a context manager, module_swaps.replaced); the originals back after.
    Yields how many were replaced."""
    return replaced(module, nn.GroupNorm, functools.partial(view_as, TritonGroupNorm))
