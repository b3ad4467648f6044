"""The `geglu` speed option: the UNet's feed-forward GEGLUs as kernels/geglu.py's Triton kernels, one pass each way
instead of PyTorch's unvectorised passes over the strided halves of the projection's output.

`FusedGEGLU` is diffusers' GEGLU (the same projection, Parameters and state_dict keys) whose activation goes
through the kernels for a CUDA input, and through GEGLU's own forward otherwise; `fused_geglus` puts a view of it
(module_swaps.view_as) in place of each GEGLU while a job runs.
"""
from __future__ import annotations

import functools

from torch import nn

from .module_swaps import replaced, view_as


@functools.cache
def fused_geglu() -> type:
    """The `FusedGEGLU` class, made on first use (diffusers is imported with the prior)."""
    from diffusers.models.activations import GEGLU

    class FusedGEGLU(GEGLU):
        def forward(self, hidden_states, *args, **kwargs):
            if args or kwargs or not hidden_states.is_cuda:
                return super().forward(hidden_states, *args, **kwargs)
            from ..kernels.geglu import geglu

            return geglu(self.proj(hidden_states))

    return FusedGEGLU


def fused_geglus(module: nn.Module):
    """Every GEGLU inside `module` replaced by a FusedGEGLU view of it while inside (a context manager,
    module_swaps.replaced); the originals back after. Yields how many were replaced."""
    from diffusers.models.activations import GEGLU

    return replaced(module, GEGLU, functools.partial(view_as, fused_geglu()))
