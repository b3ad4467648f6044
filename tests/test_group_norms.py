"""The vae-norm and unet-norm speed options (prior/group_norms.py): the VAE's and the UNet's group norms swapped for
the Triton kernels' while a job runs, and the encoder's latents and input gradients, and the UNet's ε, unchanged
by it on the GPU."""
import pytest
import torch

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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _kernel_runs(model) -> tuple[list, list]:
    """Forward pre-hooks on the model's TritonGroupNorms that note whether each call takes the kernels."""
    ran: list = []
    hooks = [m.register_forward_pre_hook(lambda m, args: ran.append(m.kernels_apply(args[0])))
             for m in model.modules() if isinstance(m, TritonGroupNorm)]
    return ran, hooks


def _no_less_accurate(run, tiny_sd_model, dtype, option: str) -> None:
    """`run(prior, options)` → (output, gradient), in `dtype` with and without the kernels, each against the fp32
    model without them. Each norm rounds its output to the dtype once either way, and an ulp's difference here and
    there grows through the random tiny model's layers (with PyTorch's norm itself the fp16 encoder's gradient is
    several ulps off fp32): the kernels must stay within 1.5x PyTorch's own error at that precision. A norm
    indexing the wrong channel's weight or the wrong group's moments is off by O(1)."""
    exact = run(load_prior(str(tiny_sd_model), torch.device("cuda"), torch.float32), SpeedOptions())
    prior = load_prior(str(tiny_sd_model), torch.device("cuda"), dtype)
    errors = {}
    for on in (False, True):
        options = SpeedOptions(channels_last=True, **{option: on})
        with speed.applied(prior, options) as report:
            assert report.get(option) == ("triton" if on else None)
            ran, hooks = _kernel_runs(prior.vae if option == "vae_norm" else prior.unet)
            out = run(prior, options)
            for hook in hooks:
                hook.remove()
            assert any(ran) == on
        errors[on] = [_rel(a, b) for a, b in zip(out, exact)]
    assert exact[1].norm() > 0 and all(e > 0 for e in errors[False])
    assert all(on <= 1.5 * off for on, off in zip(errors[True], errors[False])), errors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_encoder_with_vae_norm_is_as_accurate_as_without(tiny_sd_model, dtype):
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()

    def run(prior, options):
        images = pixels.clone().requires_grad_(True)
        latents = prior.encode_images(images)
        return latents, torch.autograd.grad((latents * latents).sum(), images)[0]

    _no_less_accurate(run, tiny_sd_model, dtype, "vae_norm")


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

    _no_less_accurate(run, tiny_sd_model, dtype, "unet_norm")
