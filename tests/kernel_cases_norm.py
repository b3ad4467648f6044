"""The group-norm kernels (kernels/group_norm.py) against torch.nn.functional.group_norm. Not collected on its
own: tests/test_kernels.py runs this file as it runs kernel_cases.py, under Triton's interpreter on CPU tensors
and, on a CUDA machine, compiled on the GPU."""
import pytest
import torch
import torch.nn.functional as F

from kernel_device import DEVICE, INTERPRETED, require_kernels

require_kernels()

from prolific.kernels import group_norm as kernels  # noqa: E402

# (N, C, H, W, groups): groups shorter than one tile, groups of several pieces whose last one is partial,
# channels per group not a power of two (the tile pads them), 1x1 maps; the GPU also runs the VAE encoder's first
# norm at 512 px (32 groups of a million values) and the UNet's widest and narrowest at 64x64 latents.
SHAPES = [(1, 8, 5, 7, 4), (2, 6, 9, 3, 3), (1, 4, 70, 61, 2), (2, 30, 20, 21, 3), (3, 12, 1, 1, 2)]
if not INTERPRETED:
    SHAPES += [(1, 128, 512, 512, 32), (3, 320, 64, 64, 32), (3, 1280, 8, 8, 32)]
# NCHW, channels-last (the UNet's convolutions), and the [N, C, L] transpose of an [N, L, C] tensor (diffusers'
# attention normalises its tokens so); each with the incoming gradient in NCHW, as autograd may hand it over.
LAYOUTS = ["nchw", "channels_last", "transposed"]
DTYPES = [torch.float32] if INTERPRETED else [torch.float32, torch.bfloat16, torch.float16]


def _laid_out(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        flat = t.flatten(2)
        return flat.transpose(1, 2).contiguous().transpose(1, 2)
    return t


def _case(shape, dtype, seed=0):
    *dims, groups = shape
    g = torch.Generator().manual_seed(seed)
    # An offset far from 0 (activations are not centred): a one-pass variance without the shift would cancel.
    x = (torch.randn(*dims, generator=g) * 2 + 30).to(DEVICE)
    weight = torch.randn(dims[1], generator=g).to(DEVICE)
    bias = torch.randn(dims[1], generator=g).to(DEVICE)
    dy = torch.randn(*dims, generator=g).to(DEVICE)
    return x, weight, bias, dy, groups


def _reference(x, weight, bias, dy, groups):
    x = x.double().requires_grad_(True)
    y = F.group_norm(x, groups, weight.double(), bias.double(), 1e-6)
    (dx,) = torch.autograd.grad(y, x, dy.double())
    return y, dx


# Relative to the reference's largest entry. fp32: the kernels sum a group's values in pieces (≤ a million
# terms: √n·2^-24 ≈ 6e-5 at worst), outputs within 1e-5; bf16 / fp16: the inputs, weights and output rounded
# once each to 8 / 11 mantissa bits.
TOL = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2.0 ** -6, 2.0 ** -5), torch.float16: (2.0 ** -9, 2.0 ** -8)}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_group_norm_matches_torch(shape, dtype, layout):
    x, weight, bias, dy, groups = _case(shape, dtype)
    xt = _laid_out(x.to(dtype), layout)
    dy = dy.to(dtype).reshape(xt.shape)
    wt, bt = weight.to(dtype), bias.to(dtype)
    y_ref, dx_ref = _reference(xt, wt, bt, dy, groups)
    xt.requires_grad_(True)
    y = kernels.group_norm(xt, groups, wt, bt, 1e-6)
    assert y.dtype == dtype and y.shape == xt.shape and y.stride() == xt.stride()
    (dx,) = torch.autograd.grad(y, xt, dy)
    assert dx.stride() == xt.stride()
    tol_y, tol_dx = TOL[dtype]
    assert (y.double() - y_ref).abs().max() <= tol_y * y_ref.abs().max()
    assert (dx.double() - dx_ref).abs().max() <= tol_dx * dx_ref.abs().max()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_each_group_uses_its_own_channels_weights(layout):
    """A weight of 0 on one channel zeroes that channel's output (bias 0) and nothing else: the kernels index the
    weight by the channel a value lies in, across the pieces of its group."""
    x, weight, _, _, _ = _case((2, 6, 33, 40, 3), torch.float32)
    weight = torch.ones_like(weight)
    weight[4] = 0.0
    y = kernels.group_norm(_laid_out(x, layout), 3, weight, torch.zeros_like(weight), 1e-6)
    assert torch.all(y[:, 4] == 0) and torch.all(y[:, [0, 1, 2, 3, 5]].abs().amax(dim=(2, 3)) > 0.5)


def test_only_tensors_with_one_run_of_pixels_are_taken():
    x = torch.zeros(2, 4, 6, 8)
    assert kernels.flat_strides(x) == (192, 48, 1)
    assert kernels.flat_strides(x.contiguous(memory_format=torch.channels_last)) == (192, 1, 4)
    assert kernels.flat_strides(x[:, :, :, :5]) is None  # rows of 5 pixels 8 apart: not one strided run
    assert kernels.flat_strides(x[:, :, 0]) == (192, 48, 1)
