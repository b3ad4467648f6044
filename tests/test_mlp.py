"""make_mlp: the plain Sequential on a CPU, the fused TritonMLP with the Triton hash grid on CUDA, the same
state_dict keys in both (the kernels themselves: tests/kernel_cases_mlp.py)."""
import pytest
import torch
from torch import nn

from prolific.config import make_config
from prolific.field.mlp import Encoded, TritonMLP, make_mlp
from prolific.field.nerf import NeRF
from prolific.field.texture import AlbedoField


def test_the_torch_mlp_is_a_plain_sequential_with_the_checkpoint_keys():
    mlp = make_mlp(32, 64, 4, 2, "torch")
    assert type(mlp) is nn.Sequential
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert {k: tuple(v.shape) for k, v in mlp.state_dict().items()} == {
        "0.weight": (64, 32), "0.bias": (64,), "2.weight": (64, 64), "2.bias": (64,), "4.weight": (4, 64),
        "4.bias": (4,)}
    assert list(make_mlp(24, 64, 3, 1).state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_the_fields_keep_plain_mlps_on_a_cpu():
    job = make_config("a ball", "test")
    nerf, texture = NeRF(job.nerf, job.hash_grid), AlbedoField(job.hash_grid, job.nerf.bound)
    assert type(nerf.mlp) is type(texture.mlp) is nn.Sequential
    assert [k for k in nerf.state_dict() if k.startswith("mlp.")] == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight", "mlp.4.bias"]
    assert not nerf.mlp[-1].bias.any()  # no constant offset on the initial density


def test_the_fused_mlp_needs_cuda_and_a_shape_it_has_kernels_for():
    with pytest.raises(ValueError, match="CUDA"):
        make_mlp(32, 64, 4, 2, "triton", device="cpu")
    with pytest.raises(ValueError, match="impl"):
        make_mlp(32, 64, 4, 2, "fast")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="no kernel"):
            make_mlp(32, 64, 32, 2, "triton", device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_triton_grid_brings_the_fused_mlp_and_loads_a_plain_checkpoint(precision):
    pytest.importorskip("triton")
    job = make_config("a ball", "test", {"nerf": {"mlp_precision": precision}})
    plain_job = make_config("a ball", "test", {"hash_grid": {"impl": "torch"}})
    torch.manual_seed(0)
    plain = NeRF(plain_job.nerf, plain_job.hash_grid, device="cuda")
    fused = NeRF(job.nerf, job.hash_grid, device="cuda")
    assert isinstance(fused.mlp, TritonMLP) and type(plain.mlp) is nn.Sequential
    assert isinstance(AlbedoField(job.hash_grid, job.nerf.bound, device="cuda").mlp, TritonMLP)
    wide = make_config("a ball", "test", {"hash_grid": {"hash_levels": 40}})
    assert type(NeRF(wide.nerf, wide.hash_grid, device="cuda").mlp) is nn.Sequential
    fused.load_state_dict(plain.state_dict())
    x = torch.rand(4096, 3, device="cuda") - 0.5
    with torch.no_grad():
        (s_plain, _, n_plain), (_, _, n_fused) = plain(x, with_normal=True), fused(x, with_normal=True)
        sigma, albedo = fused(x)  # under bf16 autocast the fused MLP runs its layers as torch ops
    # Normals run the MLP in fp32 whatever the precision; tolerances as kernel_cases.py's packed render test.
    torch.testing.assert_close(n_fused, n_plain, rtol=1e-4, atol=1e-5)
    assert sigma.dtype == albedo.dtype == torch.float32
    if precision == "fp32":
        torch.testing.assert_close(sigma, s_plain, rtol=1e-4, atol=1e-5)
    else:
        assert float((sigma - s_plain).abs().max() / s_plain.abs().max()) < 2e-2


def test_a_grid_wider_than_the_fused_kernels_gets_pytorch_layers_not_an_error():
    from prolific.field.mlp import mlp_impl

    assert mlp_impl("triton", 32, 64, 4, 2) == mlp_impl("triton", 64, 64, 3, 1) == "triton"
    assert mlp_impl("triton", 80, 64, 4, 2) == "torch"  # e.g. hash_levels 40: 80 features into the MLP
    assert mlp_impl("torch", 32, 64, 4, 2) == mlp_impl("tcnn", 32, 64, 4, 2) == "torch"


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
def test_a_probes_values_are_taken_bit_for_bit_in_any_layout(device):
    """Encoded.take moves rows of 8 and 16 bytes as single int64 / complex128 elements: the values must come
    back bit for bit (NaN payloads and -0.0 included) at the asked rows, as index_select gives them."""
    g = torch.Generator().manual_seed(0)
    n = 1000
    level_major = torch.randn(16, n, 2, generator=g)
    outputs = torch.randn(n, 4, generator=g)
    odd = torch.tensor([float("nan"), -0.0, float("inf"), 1e-45])
    outputs[7], level_major[3, 7] = odd, odd[:2]
    outputs[9] = torch.tensor([0x7FC00123, 0x7FA00001, 0, -1], dtype=torch.int32).view(torch.float32)  # payloads
    rows = torch.tensor([9, 7, 0, 999, 7, 500])
    cases = [Encoded(level_major, outputs), Encoded(torch.randn(n, 32, generator=g), None),
             Encoded(torch.randn(16, n, 3, generator=g), torch.randn(n, 3, generator=g)),
             Encoded(level_major.permute(1, 0, 2).contiguous().permute(1, 0, 2), outputs)]  # not contiguous
    for values in cases:
        values = Encoded(values.features.to(device), None if values.out is None else values.out.to(device))
        taken = values.take(rows.to(device))
        expected = values.features.index_select(values.point_dim, rows.to(device))
        assert taken.features.shape == expected.shape
        assert torch.equal(_bits(taken.features), _bits(expected))
        if values.out is not None:
            assert torch.equal(_bits(taken.out), _bits(values.out.index_select(0, rows.to(device))))
