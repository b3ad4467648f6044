"""The channels-last speed option (prior/channels_last.py): the UNet's activations stay NHWC from block to block
(diffusers' own transformer blocks fold back to NCHW), with the same noise prediction and input gradient as the
NCHW UNet, and the UNet is given back as it was."""
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from prolific.prior import speed
from prolific.prior.channels_last import channels_last_unet
from prolific.prior.diffusion import load_prior
from prolific.prior.speed import SpeedOptions


def _unet(linear_projection: bool) -> UNet2DConditionModel:
    """SD 2.1's block layout (linear projections in and out of the transformer blocks) or SD 1.5's (1x1 convs)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32, 32), layers_per_block=1, cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4,
        norm_num_groups=8, use_linear_projection=linear_projection)


def _layouts(unet: torch.nn.Module) -> tuple[dict, list]:
    """Hooks recording whether each resnet's and transformer block's output is NHWC."""
    seen, handles = {}, []
    for name, module in unet.named_modules():
        if isinstance(module, (ResnetBlock2D, Transformer2DModel)):
            def hook(m, args, out, name=name):
                out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
                seen[name] = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
            handles.append(module.register_forward_hook(hook))
    return seen, handles


@pytest.mark.parametrize("linear_projection", [True, False])
def test_the_unet_stays_nhwc_with_the_same_noise_and_gradient(linear_projection):
    unet = _unet(linear_projection)
    blocks = {name: m for name, m in unet.named_modules() if type(m) is Transformer2DModel}
    keys = list(unet.state_dict())
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    text = torch.randn(2, 5, 16)
    expected = unet(x, 10, text).sample
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    seen, handles = _layouts(unet)
    with channels_last_unet(unet) as count:
        assert count == len(blocks) > 0 and list(unet.state_dict()) == keys
        got = unet(x.contiguous(memory_format=torch.channels_last), 10, text).sample
        (grad,) = torch.autograd.grad(got.square().sum(), x)
    for handle in handles:
        handle.remove()
    assert seen and all(seen.values()), [name for name, nhwc in seen.items() if not nhwc]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    assert {name: m for name, m in unet.named_modules() if type(m) is Transformer2DModel} == blocks
    assert all(p.is_contiguous() for p in unet.parameters())


def test_the_option_reports_the_blocks_and_lora_layers_injected_inside_stay(tiny_sd_model):
    """The estimator is built inside the job's settings: its LoRA layers, injected into the replaced blocks'
    attention, are the same modules in the UNet given back (the estimator's close takes them off)."""
    prior = load_prior(str(tiny_sd_model), torch.device("cpu"), torch.float32)
    with speed.applied(prior, SpeedOptions(channels_last=True)) as report:
        assert report["channels_last"] == "on, 4 transformer blocks keeping NHWC"
        inner = prior.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
        inner.to_q = torch.nn.Sequential(inner.to_q)
    assert isinstance(prior.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q, torch.nn.Sequential)
