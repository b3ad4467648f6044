"""The stage-3 albedo field: a hash encoding of 3D surface points → small MLP → rgb in [0,1].

A volumetric field queried only on the fixed mesh's surface: it needs no UVs while it trains (the export bakes
it into a UV texture afterwards) and its resolution does not depend on the triangle sizes.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import HashGridConfig
from .hashgrid import make_hash_encoding
from .mlp import encode, make_mlp, mlp_impl

HIDDEN = 64


class AlbedoField(nn.Module):
    """albedo(x [N,3] world) -> [N,3] in [0,1] over the cube [-bound, bound]^3, on stage 1's hash grid settings
    (the fused MLP with the Triton grid, as stage 1's NeRF)."""

    def __init__(self, grid: HashGridConfig, bound: float, device: torch.device | str | None = None):
        super().__init__()
        self.bound = float(bound)
        self.encoding = make_hash_encoding(grid.hash_levels, grid.hash_features, grid.hash_log2_size,
                                           grid.hash_base_res, grid.hash_max_res, device=device, impl=grid.impl)
        shape = (self.encoding.out_dim, HIDDEN, 3, 1)
        self.mlp = make_mlp(*shape, mlp_impl(self.encoding.impl, *shape), device)
        self.to(device or "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = (x / self.bound + 1) / 2
        return torch.sigmoid(encode(self.encoding, self.mlp, unit))

    def fit(self, target_fn: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor, steps: int,
            lr: float = 1e-2, batch: int = 1 << 14, generator: torch.Generator | None = None) -> float:
        """Regress the field onto target_fn at the given surface points (e.g. stage 1's albedo), so the texture
        stage starts from the NeRF's colours instead of grey. Returns the last mean squared error."""
        with torch.no_grad():
            target = torch.cat([target_fn(points[i:i + batch]) for i in range(0, points.shape[0], batch)])
        optimizer = torch.optim.Adam(self.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-15)
        err = torch.zeros(())
        gen_device = generator.device if generator is not None else "cpu"
        for _ in range(steps):
            pick = torch.randint(0, points.shape[0], (min(batch, points.shape[0]),), generator=generator,
                                 device=gen_device).to(points.device)
            err = ((self(points[pick]) - target[pick]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            err.backward()
            optimizer.step()
        return float(err.detach())


def nerf_albedo(nerf: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Stage 1's albedo as a function of world points (the NeRF's forward returns (sigma, albedo))."""
    def albedo(x: torch.Tensor) -> torch.Tensor:
        return nerf(x)[1]
    return albedo
