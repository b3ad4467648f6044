"""The accuracy check of a speed option that swaps PyTorch layers for Triton kernels (vae-norm, unet-norm, geglu):
a model's outputs in half precision with and without the option, each against the fp32 model without it."""
from __future__ import annotations

from typing import Callable

import torch

from prolific.prior import speed
from prolific.prior.diffusion import load_prior
from prolific.prior.speed import SpeedOptions


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def no_less_accurate(run: Callable, model, dtype: torch.dtype, option: str,
                     watch: Callable[[object], tuple[list, list]]) -> None:
    """`run(prior, options)` → (output, gradient) on CUDA, in `dtype` with and without `option` (channels-last
    on, as the jobs run), each against the fp32 model without it. The kernels round to the dtype no more often
    than PyTorch, and an ulp's difference here and there grows through the random tiny model's layers: they must
    stay within 1.5x PyTorch's own error at that precision; a wrong index or a wrong derivative is off by O(1).
    `watch(prior)` → (a list its hooks append to whenever a call takes the kernels, the hooks): the kernels must
    run with the option and only with it."""
    exact = run(load_prior(str(model), torch.device("cuda"), torch.float32), SpeedOptions())
    prior = load_prior(str(model), torch.device("cuda"), dtype)
    errors = {}
    for on in (False, True):
        options = SpeedOptions(channels_last=True, **{option: on})
        with speed.applied(prior, options) as report:
            assert report.get(option, "").startswith("triton") == on
            ran, hooks = watch(prior)
            out = run(prior, options)
            for hook in hooks:
                hook.remove()
            assert any(ran) == on
        errors[on] = [rel(a, b) for a, b in zip(out, exact)]
    assert exact[1].norm() > 0 and all(e > 0 for e in errors[False])
    assert all(on <= 1.5 * off for on, off in zip(errors[True], errors[False])), errors
