"""The VSD estimator's LoRA layers: the per-sample gate that peft's layers apply to the LoRA input, and
`KernelLoraLinear`, peft's LoRA Linear with its branch computed by kernels/lora.py's Triton kernels.

`lora_config` builds the adapter's LoraConfig; with `kernels=True` it registers `KernelLoraLinear` for nn.Linear
through peft's custom-module dispatch (`LoraConfig._register_custom_module`, which peft consults before its own
layers), so the adapter is built with those layers from the start and nothing is swapped on live objects. The
layer is peft's Linear in every other respect (the same parameters, state_dict keys, merging, enabling and
disabling); its forward takes the kernels only for what they compute — one active plain adapter, no bias, the
gate or an identity in its dropout slot, fp32 LoRA weights of a rank the kernels take, a CUDA input — and peft's
own forward otherwise.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections (threestudio's LoRA attn processors)


class LoraSampleGate(nn.Module):
    """Sits in the LoRA dropout slot (`lora_dropout[adapter]`, which peft's layers apply to the LoRA branch's
    input by design; the adapter is built with dropout 0, so peft puts an identity there). Without a mask it is
    that identity; with a boolean mask over the batch, the masked-off samples' LoRA input is zero, so their
    delta B(A(0))·s is exactly zero and they get the base layer's output unchanged, while the others compute
    exactly what peft computes for them."""

    def __init__(self):
        super().__init__()
        self.mask: torch.Tensor | None = None

    @contextlib.contextmanager
    def only(self, mask: torch.Tensor):
        previous, self.mask = self.mask, mask.bool()
        try:
            yield
        finally:
            self.mask = previous

    def check(self, batch: int) -> None:
        """A mask (when set) must give one entry per sample of the batch it gates."""
        if self.mask is not None and self.mask.shape[0] != batch:
            raise ValueError(f"LoRA sample mask of {self.mask.shape[0]} entries applied to a batch of {batch}.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return x
        self.check(x.shape[0])
        keep = self.mask.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))


@functools.cache
def kernel_lora_linear() -> type:
    """The `KernelLoraLinear` class, made on first use (peft takes seconds to import: only an estimator needs it)."""
    from peft.tuners.lora.layer import Linear

    class KernelLoraLinear(Linear):
        """peft's LoRA Linear whose branch runs kernels/lora.py's kernels where they compute what peft would."""

        def _kernel_adapter(self, x: torch.Tensor, args, kwargs) -> str | None:
            if args or kwargs or not x.is_cuda or self.disable_adapters or self.merged:
                return None
            active = [name for name in self.active_adapters if name in self.lora_A]
            if len(active) != 1:
                return None
            name = active[0]
            if name in self.lora_variant or self.lora_bias.get(name, False):
                return None
            if not isinstance(self.lora_dropout[name], (LoraSampleGate, nn.Identity)):
                return None
            from ..kernels.lora import unsupported

            return None if unsupported(self.lora_A[name].weight, self.lora_B[name].weight) else name

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            name = self._kernel_adapter(x, args, kwargs)
            if name is None:
                return super().forward(x, *args, **kwargs)
            from ..kernels.lora import lora_delta

            gate = self.lora_dropout[name]
            keep = None
            if isinstance(gate, LoraSampleGate):
                gate.check(x.shape[0])
                keep = gate.mask
            return lora_delta(self.base_layer(x), x, self.lora_A[name].weight, self.lora_B[name].weight,
                              self.scaling[name], keep)

    return KernelLoraLinear


def lora_config(rank: int, kernels: bool = False):
    """The estimator's adapter: rank `rank`, alpha = rank (scale 1), B at zero, on the attention projections;
    with `kernels` its Linear layers are `KernelLoraLinear`."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=TARGETS)
    if kernels:
        config._register_custom_module({nn.Linear: kernel_lora_linear()})
    return config
