"""The `channels-last` speed option: the UNet's activations in NHWC from its first convolution to its last.

`unet.to(memory_format=torch.channels_last)` alone does not get there: diffusers' Transformer2DModel folds its
tokens back into an image with `.contiguous()`, i.e. into NCHW, so behind every transformer block the residual
add, the next resnet (its shortcut add, its convolutions' input conversions) and the up blocks' skip
concatenations run on NCHW or mixed layouts. `LayoutKeepingTransformer2D` is that Transformer2DModel with the fold
keeping the layout of the block's input (a free view for NHWC), a view of the original (module_swaps.view_as).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from .module_swaps import replaced, view_as


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC 4-d tensor, else contiguous_format (what `.contiguous()` gives)."""
    nhwc = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if nhwc else torch.contiguous_format


@functools.cache
def layout_keeping_transformer() -> type:
    """The `LayoutKeepingTransformer2D` class, made on first use (diffusers is imported with the prior)."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    class LayoutKeepingTransformer2D(Transformer2DModel):
        def _get_output_for_continuous_inputs(self, hidden_states, residual, batch_size, height, width, inner_dim):
            # Transformer2DModel's own fold (diffusers 0.42), with the layout of `residual` instead of NCHW.
            def fold(tokens):
                image = tokens.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
                return image.contiguous(memory_format=memory_format_of(residual))

            if self.use_linear_projection:
                hidden_states = fold(self.proj_out(hidden_states))
            else:
                hidden_states = self.proj_out(fold(hidden_states))
            return hidden_states + residual

    return LayoutKeepingTransformer2D


@contextlib.contextmanager
def channels_last_unet(unet: nn.Module):
    """The UNet's weights in channels-last and its transformer blocks keeping NHWC while inside; its weights back
    in NCHW and its own blocks back after. Yields how many blocks were replaced."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    cls = layout_keeping_transformer()
    unet.to(memory_format=torch.channels_last)
    try:
        with replaced(unet, Transformer2DModel, functools.partial(view_as, cls)) as count:
            yield count
    finally:
        unet.to(memory_format=torch.contiguous_format)
