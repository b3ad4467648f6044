"""The vae-norm and unet-norm speed options (prior/group_norms.py): the VAE's and the UNet's group norms swapped for
the Triton kernels' while a job runs, and the encoder's latents and input gradients, and the UNet's ε, unchanged
by it on the GPU."""
from typing import Callable

import pytest
import torch
from option_accuracy import no_less_accurate

from prolific.prior import speed
from prolific.prior.diffusion import load_prior
from prolific.prior.speed import SpeedOptions
from prolific.prior.group_norms import TritonGroupNorm, triton_group_norms


def test_the_swapped_norms_share_the_parameters_and_are_put_back(tiny_sd_model):
    """vae-norm puts a TritonGroupNorm in place of every GroupNorm of the VAE, holding the same Parameters (a
    checkpoint or an optimizer sees nothing new), and the originals come back after; off CUDA it is reported
    skipped and swaps nothing, and the swapped norm computes nn.GroupNorm's output where its kernels do not apply."""
    prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
    norms = {name: m for name, m in prior.vae.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    keys = list(prior.vae.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = prior.encode_images(x)
    with triton_group_norms(prior.vae) as count:
        swapped = {name: m for name, m in prior.vae.named_modules() if isinstance(m, torch.nn.GroupNorm)}
        assert count == len(norms) > 0 and {type(m) for m in swapped.values()} == {TritonGroupNorm}
        assert all(swapped[n].weight is norms[n].weight and swapped[n].bias is norms[n].bias for n in norms)
        assert list(prior.vae.state_dict()) == keys
        with torch.no_grad():
            assert torch.equal(prior.encode_images(x), before)
    assert all(m is norms[n] for n, m in prior.vae.named_modules() if n in norms)
    with speed.applied(prior, SpeedOptions(vae_norm=True, unet_norm=True)) as report:
        assert report["vae_norm"] == report["unet_norm"] == "skipped: needs CUDA and triton"
        for model in (prior.vae, prior.unet):
            assert all(type(m) is torch.nn.GroupNorm for m in model.modules() if isinstance(m, torch.nn.GroupNorm))


def _kernel_runs(module_of: Callable):
    """The `watch` of option_accuracy.no_less_accurate: pre-hooks on the TritonGroupNorms of module_of(prior) that
    note whether each call takes the kernels."""
    def watch(prior) -> tuple[list, list]:
        ran: list = []
        hooks = [m.register_forward_pre_hook(lambda m, args: ran.append(m.kernels_apply(args[0])))
                 for m in module_of(prior).modules() if isinstance(m, TritonGroupNorm)]
        return ran, hooks

    return watch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_encoder_with_vae_norm_is_as_accurate_as_without(tiny_sd_model, dtype):
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()

    def run(prior, options):
        images = pixels.clone().requires_grad_(True)
        latents = prior.encode_images(images)
        return latents, torch.autograd.grad((latents * latents).sum(), images)[0]

    no_less_accurate(run, tiny_sd_model, dtype, "vae_norm", _kernel_runs(lambda prior: prior.vae))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_channels_last_unet_with_unet_norm_is_as_accurate_as_without(tiny_sd_model, dtype):
    """As the estimator's training runs it: the channels-last UNet's ε and the gradient of a loss on it with
    respect to its input."""
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)).cuda()
    t = torch.tensor([100, 700], device="cuda")

    def run(prior, options):
        emb = prior.embed_prompt("a red cube").uncond.expand(2, -1, -1)
        x = x_t.clone()
        if options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        eps = prior.unet_eps(x, t, emb)
        return eps, torch.autograd.grad((eps * eps).sum(), x)[0]

    no_less_accurate(run, tiny_sd_model, dtype, "unet_norm", _kernel_runs(lambda prior: prior.unet))
