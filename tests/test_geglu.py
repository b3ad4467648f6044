"""The geglu speed option (prior/geglu.py): the UNet's feed-forward GEGLUs swapped for the Triton kernels' while a
job runs, and the UNet's ε and the gradient through it unchanged by it on the GPU."""
import pytest
import torch
from diffusers.models.activations import GEGLU
from option_accuracy import no_less_accurate

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


def _calls(prior) -> tuple[list, list]:
    """The `watch` of option_accuracy.no_less_accurate: forward hooks on the UNet's FusedGEGLUs (on CUDA, each call
    takes the kernels)."""
    calls: list = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(True)) for m in prior.unet.modules()
             if type(m) is fused_geglu()]
    return calls, hooks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_unet_with_geglu_is_as_accurate_as_without(tiny_sd_model, dtype):
    """The channels-last UNet's ε and the input gradient of a loss on it."""
    x_t, t = _inputs("cuda")

    def run(prior, options):
        return _eps_and_grad(prior, x_t.contiguous(memory_format=torch.channels_last) if options.channels_last else x_t,
                             t)

    no_less_accurate(run, tiny_sd_model, dtype, "geglu", _calls)
