"""The LoRA kernels (kernels/lora.py) against peft's own LoRA Linear on the same weights. Not collected on its own:
tests/test_kernels.py runs this file as it runs kernel_cases.py, under Triton's interpreter on CPU tensors and,
on a CUDA machine, compiled on the GPU."""
import pytest
import torch
from torch import nn

from kernel_device import DEVICE, INTERPRETED, require_kernels

require_kernels()

from peft import LoraConfig, inject_adapter_in_model  # noqa: E402

from prolific.kernels.lora import lora_delta  # noqa: E402
from prolific.prior.lora_layers import LoraSampleGate  # noqa: E402

# (samples, rows per sample, in, out, rank, alpha): widths that are no multiple of a tile, rank 1 and a rank
# that fills the padded 16, a partial last row block, row blocks wholly inside a gated-off sample (which the
# forward skips); the GPU also runs SD 2.1's self-attention projection at 64x64 latents and a cross-attention
# key projection of the 77 text tokens.
SHAPES = [(2, 5, 20, 33, 4, 4), (3, 7, 70, 17, 1, 2), (1, 40, 64, 130, 16, 8), (3, 64, 20, 33, 4, 4)]
if not INTERPRETED:
    SHAPES += [(3, 4096, 320, 320, 4, 4), (1, 77, 1024, 640, 4, 4)]
DTYPES = [torch.float32] if INTERPRETED else [torch.float32, torch.bfloat16, torch.float16]
# Relative to the reference's largest entry. Both sides take the same fp32 products (3xTF32 here, as fp32
# accurate as peft's fp32 matmuls) in another order, then round the same sum to the output dtype: at most one
# rounding step apart there (2^-8 bf16, 2^-11 fp16); the weights' gradients sum over every row in fp32.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
TOL_WEIGHTS = 1e-4


class _Holder(nn.Module):
    def __init__(self, base: nn.Linear):
        super().__init__()
        self.proj = base


def _layer(shape, dtype, seed=0):
    """A peft LoRA Linear (adapter "a", fp32 LoRA weights, non-zero B) on a frozen base layer in `dtype`."""
    _, _, k, n, rank, alpha = shape
    torch.manual_seed(seed)
    holder = _Holder(nn.Linear(k, n).to(DEVICE, dtype).requires_grad_(False))
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"]), holder, adapter_name="a")
    layer = holder.proj
    layer.lora_A["a"].float()  # fp32 whatever the base layer's dtype, as the estimator trains them
    layer.lora_B["a"].float()
    with torch.no_grad():
        layer.lora_A["a"].weight.copy_(torch.randn(rank, k) * 0.3)
        layer.lora_B["a"].weight.copy_(torch.randn(n, rank) * 0.3)
    layer.lora_dropout["a"] = LoraSampleGate()
    return layer


def _inputs(shape, dtype):
    s, rows, k, _, _, _ = shape
    g = torch.Generator().manual_seed(1)
    return torch.randn(s, rows, k, generator=g).to(DEVICE, dtype)


def _rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _run(layer, x, keep, kernels: bool, want_x: bool = True):
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    x = x.clone().requires_grad_(want_x)
    gate = layer.lora_dropout["a"]
    if kernels:
        out = lora_delta(layer.base_layer(x), x, a, b, layer.scaling["a"], keep)
    elif keep is not None:
        with gate.only(keep):
            out = layer(x)
    else:
        out = layer(x)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(out.device, out.dtype)
    inputs = [a, b] + ([x] if want_x else [])
    grads = torch.autograd.grad(out, inputs, grad)
    return out, grads


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("gated", [False, True], ids=["all", "gated"])
def test_the_kernels_give_pefts_output_and_gradients(shape, dtype, gated):
    layer = _layer(shape, dtype)
    x = _inputs(shape, dtype)
    keep = (torch.arange(shape[0], device=DEVICE) % 2 == 0) if gated else None
    (out, grads), (ref, ref_grads) = (_run(layer, x, keep, kernels) for kernels in (True, False))
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert _rel(out, ref) <= TOL[dtype]
    da, db, dx = grads
    ref_da, ref_db, ref_dx = ref_grads
    assert _rel(da, ref_da) <= TOL_WEIGHTS and _rel(db, ref_db) <= TOL_WEIGHTS
    assert _rel(dx, ref_dx) <= TOL[dtype]
    if gated:  # the masked-off samples keep the base output exactly
        base = layer.base_layer(x)
        assert torch.equal(out[1::2], base[1::2]) and not torch.equal(out[0], base[0])


def test_without_the_inputs_gradient_the_weights_still_get_theirs():
    shape = SHAPES[0]
    layer = _layer(shape, torch.float32)
    x = _inputs(shape, torch.float32)
    (_, (da, db)), (_, (ref_da, ref_db)) = (_run(layer, x, None, k, want_x=False) for k in (True, False))
    assert _rel(da, ref_da) <= TOL_WEIGHTS and _rel(db, ref_db) <= TOL_WEIGHTS


def test_no_rows_give_an_empty_output_and_zero_gradients():
    layer = _layer(SHAPES[0], torch.float32)
    x = torch.zeros(0, 20, device=DEVICE, requires_grad=True)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    out = lora_delta(layer.base_layer(x), x, a, b, 1.0)
    assert out.shape == (0, 33)
    da, db, dx = torch.autograd.grad(out.sum(), (a, b, x))
    assert not da.any() and not db.any() and dx.shape == (0, 20)


def test_lora_weights_in_another_dtype_are_refused_with_a_sentence():
    layer = _layer(SHAPES[0], torch.float32)
    x = _inputs(SHAPES[0], torch.float32)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    with pytest.raises(ValueError, match="fp32 LoRA weights"):
        lora_delta(layer.base_layer(x), x, a.half(), b.half(), 1.0)


def test_the_layers_output_is_updated_in_place_and_a_strided_one_refused():
    """The branch is added into the base layer's output (no second activation-sized tensor per layer); a
    strided output, which the kernels cannot write as rows, is refused with a sentence."""
    layer = _layer(SHAPES[0], torch.float32)
    x = _inputs(SHAPES[0], torch.float32)
    a, b = layer.lora_A["a"].weight, layer.lora_B["a"].weight
    with torch.no_grad():
        y = layer.base_layer(x)
        base = y.clone()
        out = lora_delta(y, x, a, b, layer.scaling["a"])
        assert out.data_ptr() == y.data_ptr() and not torch.equal(y, base)
        with pytest.raises(ValueError, match="contiguous"):
            lora_delta(base.transpose(0, 1), x.transpose(0, 1), a, b, 1.0)
