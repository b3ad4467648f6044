"""The fields' small ReLU MLPs: `make_mlp` returns a plain nn.Sequential of Linear, ReLU, ..., Linear (the CPU
path) or `TritonMLP`, the same modules run by kernels/mlp.py's fused kernels. Both have the same state_dict
keys (0.weight, 0.bias, 2.weight, ...), so checkpoints load in either."""
from __future__ import annotations

import torch
from torch import nn

IMPLS = ("torch", "triton")


class TritonMLP(nn.Sequential):
    """The Sequential's layers in one fused kernel per pass, as accurate as fp32 (3xTF32 products; CUDA tensors,
    CPU ones under TRITON_INTERPRET=1).

    Its input is [N, in], or level-major [L, N, F] features (L·F = in) as a `TritonHashGrid` gives them with
    level_major=True: the kernels read that layout, so the features are never transposed. Under autocast it runs
    the layers as the Sequential does: the kernels compute at fp32 accuracy only, and autocast asks for the
    layers in lower precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            return super().forward(x.permute(1, 0, 2).reshape(x.shape[1], -1) if x.dim() == 3 else x)
        from ..kernels.mlp import fused_mlp  # imports triton: only where this MLP runs

        return fused_mlp(x, [p for m in self if isinstance(m, nn.Linear) for p in (m.weight, m.bias)])


def encode(encoding: nn.Module, mlp: nn.Module, unit: torch.Tensor) -> torch.Tensor:
    """mlp(encoding(unit)) for a field's hash encoding and MLP; a `TritonMLP` (built only after the Triton grid,
    `mlp_impl`) takes the grid's features level-major."""
    if isinstance(mlp, TritonMLP):
        return mlp(encoding(unit, level_major=True))
    return mlp(encoding(unit))


def fused_shape(in_dim: int, hidden: int, out_dim: int, hidden_layers: int) -> bool:
    """Whether kernels/mlp.py has kernels for this MLP: hidden a power of two in 16-64, in_dim ≤ 64, out_dim ≤ 16."""
    return hidden in (16, 32, 64) and in_dim <= 64 and out_dim <= 16 and hidden_layers in (1, 2)


def mlp_impl(grid_impl: str, in_dim: int, hidden: int, out_dim: int, hidden_layers: int) -> str:
    """The implementation of a field's MLP after a hash grid of `grid_impl`: the fused kernels with the Triton
    grid (built only where triton runs on CUDA) where they have the shape (a wider grid, e.g. more levels, gets
    PyTorch layers), PyTorch layers with the torch and tcnn grids."""
    return "triton" if grid_impl == "triton" and fused_shape(in_dim, hidden, out_dim, hidden_layers) else "torch"


def make_mlp(in_dim: int, hidden: int, out_dim: int, hidden_layers: int, impl: str = "torch",
             device: torch.device | str | None = None) -> nn.Sequential:
    """Linear(in_dim, hidden), ReLU, [Linear(hidden, hidden), ReLU,] Linear(hidden, out_dim) on `device` (CPU when
    None): hidden_layers 1 or 2 hidden ReLU layers, as a plain Sequential (impl torch) or a `TritonMLP` (impl
    triton, CUDA, for the shapes of `fused_shape`)."""
    device = torch.device(device or "cpu")
    if impl not in IMPLS:
        raise ValueError(f"Unknown MLP impl '{impl}': use {', '.join(IMPLS)}.")
    if impl == "triton":
        if device.type != "cuda":
            raise ValueError("The fused MLP runs on CUDA devices only.")
        if not fused_shape(in_dim, hidden, out_dim, hidden_layers):
            raise ValueError(f"The fused MLP has no kernel for {in_dim}→{hidden}×{hidden_layers}→{out_dim}.")
    widths = [in_dim] + [hidden] * hidden_layers
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    cls = TritonMLP if impl == "triton" else nn.Sequential
    return cls(*layers, nn.Linear(hidden, out_dim)).to(device)
