"""The fields' small ReLU MLPs: `make_mlp` returns a plain nn.Sequential of Linear, ReLU, ..., Linear (the CPU
path) or `TritonMLP`, the same modules run by kernels/mlp.py's fused kernels. Both have the same state_dict
keys (0.weight, 0.bias, 2.weight, ...), so checkpoints load in either.

`encode` runs a field's hash encoding and MLP; `probe` does so without gradients and keeps what it computed
(`Encoded`), which a later `encode` with gradients at the same points replays instead of computing again: the
grids' and the fused MLP's backward recompute from their inputs, so only their forward is skipped."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IMPLS = ("torch", "triton")


class TritonMLP(nn.Sequential):
    """The Sequential's layers in one fused kernel per pass, with fp32 data and the products of fp32 matmuls (3xTF32
    at fp32 accuracy, or TF32 where PyTorch allows it; CUDA tensors, CPU ones under TRITON_INTERPRET=1).

    Its input is [N, in], or level-major [L, N, F] features (L·F = in) as a `TritonHashGrid` gives them with
    level_major=True: the kernels read that layout, so the features are never transposed. Under autocast it runs
    the layers as the Sequential does: autocast asks for fp16/bf16 layers, which the kernels do not compute."""

    def forward(self, x: torch.Tensor, replay: torch.Tensor | None = None, exact: bool = False) -> torch.Tensor:
        """`replay`: the output an earlier call without gradients gave for this x; `exact`: 3xTF32 products even
        where TF32 is allowed (kernels/mlp.fused_mlp)."""
        if torch.is_autocast_enabled(x.device.type):
            return super().forward(x.permute(1, 0, 2).reshape(x.shape[1], -1) if x.dim() == 3 else x)
        from ..kernels.mlp import fused_mlp  # imports triton: only where this MLP runs

        params = [p for m in self if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]
        return fused_mlp(x, params, replay, exact)


# A row of this many bytes moved as one element of this dtype: bits copied as they are.
_ROW_AS = {8: torch.int64, 16: torch.complex128}


def _select(t: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """t.index_select(dim, idx); where dim is t's second-last and its rows are 8 or 16 bytes, each row moves as one
    element. PyTorch's gather along a middle dimension is several times slower for rows of two fp32 features (a
    level-major grid's), and on CUDA it gathers 16-byte rows (the fused MLP's four outputs) with a 32-thread block
    per row: 0.7 ms for 2.3M rows on an H100 (bench_results/2026-12-08_h100_unet_layout/profile_solid.txt)."""
    as_dtype = _ROW_AS.get(t.shape[-1] * t.element_size())
    if as_dtype is not None and dim == t.dim() - 2 and t.is_contiguous():
        return t.view(as_dtype).squeeze(-1).index_select(dim, idx).unsqueeze(-1).view(t.dtype)
    return t.index_select(dim, idx)


@dataclass(frozen=True)
class Encoded:
    """What `probe` computed at N points: the encoding's features ([N, F], or level-major [L, N, F] for a
    `TritonMLP`) and, where the MLP can replay it (a `TritonMLP`), its output [N, out]."""

    features: torch.Tensor
    out: torch.Tensor | None

    @property
    def point_dim(self) -> int:
        return 1 if self.features.dim() == 3 else 0

    def take(self, idx: torch.Tensor) -> "Encoded":
        """The points idx (int64 indices) in that order."""
        out = None if self.out is None else _select(self.out, 0, idx)
        return Encoded(_select(self.features, self.point_dim, idx), out)

    def split(self, size: int) -> list["Encoded"]:
        parts = self.features.split(size, dim=self.point_dim)
        outs = self.out.split(size) if self.out is not None else [None] * len(parts)
        return [Encoded(f, o) for f, o in zip(parts, outs)]

    @staticmethod
    def cat(parts: list["Encoded"]) -> "Encoded":
        out = None if parts[0].out is None else torch.cat([p.out for p in parts])
        return Encoded(torch.cat([p.features for p in parts], dim=parts[0].point_dim), out)

    @staticmethod
    def assemble(parts: list[tuple[torch.Tensor, "Encoded"]], n: int) -> "Encoded":
        """n points from (rows, values) pairs whose rows together cover 0..n-1 once; the list is emptied as its
        parts are placed, so each is freed once copied."""
        first = parts[0][1]
        dim = first.point_dim
        shape = list(first.features.shape)
        shape[dim] = n
        features = first.features.new_empty(shape)
        out = None if first.out is None else first.out.new_empty(n, first.out.shape[1])
        while parts:
            rows, values = parts.pop()
            features.index_copy_(dim, rows, values.features)
            if out is not None:
                out.index_copy_(0, rows, values.out)
        return Encoded(features, out)


def replays(encoding: nn.Module) -> bool:
    """Whether `encode` can replay a `probe` with this encoding (ours can; tiny-cuda-nn's cannot)."""
    return getattr(encoding, "replays", False)


def _features(encoding: nn.Module, mlp: nn.Module, unit: torch.Tensor, dtype, replay: "Encoded | None"):
    kwargs = {"level_major": True} if isinstance(mlp, TritonMLP) and dtype is None else {}
    if replay is not None:
        kwargs["replay"] = replay.features
    return encoding(unit, **kwargs)


def _mlp(mlp: nn.Module, features: torch.Tensor, dtype, replay_out=None, exact: bool = False) -> torch.Tensor:
    if dtype is not None:
        with torch.autocast("cuda", dtype=dtype):
            return mlp(features).float()
    if isinstance(mlp, TritonMLP):
        return mlp(features, replay=replay_out, exact=exact)
    return mlp(features)


def encode(encoding: nn.Module, mlp: nn.Module, unit: torch.Tensor, dtype: torch.dtype | None = None,
           replay: Encoded | None = None, exact: bool = False) -> torch.Tensor:
    """mlp(encoding(unit)) [N, out] in fp32 for a field's hash encoding and MLP; `dtype` runs the MLP under that
    autocast on CUDA. A `TritonMLP` (built only after the Triton grid, `mlp_impl`) takes the grid's features
    level-major, and with `exact` computes at fp32 accuracy even where TF32 is allowed. `replay`: `probe`'s
    values at these points (same encoding, MLP and dtype)."""
    features = _features(encoding, mlp, unit, dtype, replay)
    return _mlp(mlp, features, dtype, None if replay is None else replay.out, exact)


@torch.no_grad()
def probe(encoding: nn.Module, mlp: nn.Module, unit: torch.Tensor,
          dtype: torch.dtype | None = None) -> tuple[torch.Tensor, Encoded]:
    """`encode` without gradients, with what a later `encode(..., replay=)` at these points reuses."""
    features = _features(encoding, mlp, unit, dtype, None)
    out = _mlp(mlp, features, dtype)
    return out, Encoded(features, out if isinstance(mlp, TritonMLP) and dtype is None else None)


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
