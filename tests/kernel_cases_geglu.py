"""The GEGLU kernels (kernels/geglu.py) against diffusers' GEGLU arithmetic, a·F.gelu(g) on the halves of a
projection's output. Not collected on its own: tests/test_kernels.py runs this file as it runs kernel_cases.py,
under Triton's interpreter on CPU tensors and, on a CUDA machine, compiled on the GPU."""
import pytest
import torch
import torch.nn.functional as F

from kernel_device import DEVICE, INTERPRETED, require_kernels

require_kernels()

from prolific.kernels.geglu import geglu  # noqa: E402

# (leading dims, half width): a width that is no multiple of a block and one of several blocks; the GPU also runs
# the feed-forward of SD 2.1's first blocks on three 64x64 latents (1280 = 4 x 320).
SHAPES = [((2, 3), 5), ((7,), 1500)]
if not INTERPRETED:
    SHAPES += [((3, 4096), 1280)]
DTYPES = [torch.float32] if INTERPRETED else [torch.float32, torch.bfloat16, torch.float16]
# Relative to the reference's largest entry: fp32 math both ways; in half precision PyTorch rounds GELU(g) before
# the product, the kernel only the product (one rounding step: 2^-8 bf16, 2^-11 fp16), and the gradients sum
# two such terms.
TOL = {torch.float32: 1e-6, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


def _reference(p: torch.Tensor) -> torch.Tensor:
    a, g = p.chunk(2, dim=-1)
    return a * F.gelu(g)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_kernels_give_the_product_and_its_gradient(shape, dtype):
    lead, d = shape
    g = torch.Generator().manual_seed(0)
    p = (torch.randn(*lead, 2 * d, generator=g) * 3).to(DEVICE, dtype)
    dy = torch.randn(*lead, d, generator=g).to(DEVICE, dtype)
    outs = []
    for fn in (geglu, _reference):
        x = p.clone().requires_grad_(True)
        y = fn(x)
        outs.append((y, torch.autograd.grad(y, x, dy)[0]))
    (y, dp), (ref, ref_dp) = outs
    assert y.shape == ref.shape and y.dtype == ref.dtype and dp.dtype == ref_dp.dtype
    assert _rel(y, ref) <= TOL[dtype]
    assert _rel(dp[..., :d], ref_dp[..., :d]) <= 2 * TOL[dtype] and _rel(dp[..., d:], ref_dp[..., d:]) <= 2 * TOL[dtype]


def test_no_rows_and_bad_inputs():
    p = torch.zeros(0, 8, device=DEVICE, requires_grad=True)
    y = geglu(p)
    assert y.shape == (0, 4)
    (dp,) = torch.autograd.grad(y.sum(), p)
    assert dp.shape == (0, 8)
    with pytest.raises(ValueError, match="two halves"):
        geglu(torch.zeros(3, 5, device=DEVICE))
    with pytest.raises(ValueError, match="contiguous"):
        geglu(torch.zeros(8, 3, device=DEVICE).t())
