"""The geglu speed option (prior/geglu.py): the UNet's feed-forward GEGLUs swapped for the Triton kernels' while a
job runs, and the UNet's ε and the gradient through it unchanged by it on the GPU."""
import pytest
import torch
from diffusers.models.activations import GEGLU

from prolific.prior import speed
from prolific.prior.diffusion import load_prior
from prolific.prior.geglu import fused_geglu, fused_geglus
from prolific.prior.speed import SpeedOptions


def _eps_and_grad(prior, x_t, t):
    emb = prior.embed_prompt("a red cube").uncond.expand(x_t.shape[0], -1, -1)
    x = x_t.clone().requires_grad_(True)
    eps = prior.unet_eps(x, t, emb)
    return eps, torch.autograd.grad((eps * eps).sum(), x)[0]


def _inputs(device):
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    return x_t, torch.tensor([100, 700], device=device)


def test_the_swapped_geglus_share_the_projection_and_are_put_back(tiny_sd_model):
    """Every GEGLU of the UNet becomes a FusedGEGLU holding the same projection (a checkpoint or an optimizer
    sees nothing new), which off CUDA computes GEGLU's own output; the originals come back after, and a CPU job
    reports the option skipped and swaps nothing."""
    prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
    geglus = {name: m for name, m in prior.unet.named_modules() if isinstance(m, GEGLU)}
    keys = list(prior.unet.state_dict())
    x_t, t = _inputs("cpu")
    before = _eps_and_grad(prior, x_t, t)
    with fused_geglus(prior.unet) as count:
        swapped = {name: m for name, m in prior.unet.named_modules() if isinstance(m, GEGLU)}
        assert count == len(geglus) > 0 and {type(m) for m in swapped.values()} == {fused_geglu()}
        assert all(swapped[n].proj is geglus[n].proj for n in geglus)
        assert list(prior.unet.state_dict()) == keys
        assert all(torch.equal(a, b) for a, b in zip(_eps_and_grad(prior, x_t, t), before))
    assert all(m is geglus[n] for n, m in prior.unet.named_modules() if n in geglus)
    with speed.applied(prior, SpeedOptions(geglu=True)) as report:
        assert report["geglu"] == "skipped: needs CUDA and triton"
        assert all(type(m) is GEGLU for m in prior.unet.modules() if isinstance(m, GEGLU))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_unet_with_geglu_is_as_accurate_as_without(tiny_sd_model, dtype):
    """The channels-last UNet's ε and the input gradient of a loss on it, in `dtype` with and without the kernels,
    each against the fp32 UNet without them: the kernels round once where PyTorch rounds twice, so they must stay
    within 1.5x PyTorch's own error; a wrong half or a wrong derivative is off by O(1)."""
    x_t, t = _inputs("cuda")
    exact = _eps_and_grad(load_prior(str(tiny_sd_model), torch.device("cuda"), torch.float32), x_t, t)
    prior = load_prior(str(tiny_sd_model), torch.device("cuda"), dtype)
    errors = {}
    for on in (False, True):
        with speed.applied(prior, SpeedOptions(channels_last=True, geglu=on)) as report:
            assert report.get("geglu", "").startswith("triton") == on
            calls: list = []
            hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in prior.unet.modules()
                     if type(m) is fused_geglu()]
            out = _eps_and_grad(prior, x_t.contiguous(memory_format=torch.channels_last), t)
            for hook in hooks:
                hook.remove()
            assert bool(calls) == on
        errors[on] = [_rel(a, b) for a, b in zip(out, exact)]
    assert exact[1].norm() > 0 and all(e > 0 for e in errors[False])
    assert all(on <= 1.5 * off for on, off in zip(errors[True], errors[False])), errors
