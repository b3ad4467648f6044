"""The stage-1 radiance field: hash encoding → small MLP → density and albedo, plus the background.

Density is softplus(raw + blob) with the paper's initialisation blob λ(1 − ‖x‖/r): object mode λ=10, r=0.5
(a soft ball at the centre to grow the object from), scene mode λ=−10, r=2.5 (density around the camera).
Softplus rather than exp (as threestudio's ProlificDreamer configs): gradients stay bounded when the optimiser
pushes density up, which keeps early VSD steps from blowing up into floaters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HashGridConfig, NerfConfig
from .hashgrid import make_hash_encoding
from .mlp import Encoded, encode, make_mlp, mlp_impl, probe, replays

BLOB = {"object": (10.0, 0.5), "scene": (-10.0, 2.5)}  # mode -> (lambda, r)
HIDDEN = 64
MLP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NeRF(nn.Module):
    """Density + albedo field over the cube [-bound, bound]^3 (world coordinates, +Z up).

    Pass `device` to build on a GPU: the hash encoding (hash_grid.impl), the MLP's implementation (the fused
    kernels with the Triton grid) and its precision are chosen for it."""

    def __init__(self, cfg: NerfConfig, grid: HashGridConfig, device: torch.device | str | None = None):
        super().__init__()
        self.bound = float(cfg.bound)
        self.blob_lambda, self.blob_radius = BLOB[cfg.mode]
        self.encoding = make_hash_encoding(grid.hash_levels, grid.hash_features, grid.hash_log2_size,
                                           grid.hash_base_res, grid.hash_max_res, device=device, impl=grid.impl)
        shape = (self.encoding.out_dim, HIDDEN, 4, 2)
        self.mlp = make_mlp(*shape, mlp_impl(self.encoding.impl, *shape), device)
        with torch.no_grad():  # no constant offset: the initial density is the blob plus small MLP noise
            self.mlp[-1].bias.zero_()
        self.to(device or "cpu")
        # nerf.mlp_precision: the MLP under bf16/fp16 autocast on CUDA (a fused MLP then runs its layers as torch
        # ops); its outputs (and so the density activation and everything downstream) are fp32.
        on_cuda = torch.device(device or "cpu").type == "cuda"
        self.mlp_dtype = MLP_DTYPES[cfg.mlp_precision] if on_cuda else None
        # Finite-difference step for normals: half a cell of the finest hash level, in world units.
        self.normal_eps = self.bound / max(grid.hash_max_res, 1)

    def blob(self, x: torch.Tensor) -> torch.Tensor:
        return self.blob_lambda * (1 - x.norm(dim=-1) / self.blob_radius)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        return ((x / self.bound) + 1) / 2

    def _raw(self, x: torch.Tensor, exact: bool = False, replay: Encoded | None = None) -> torch.Tensor:
        """The MLP's raw outputs [N,4]; `exact` keeps it at fp32 accuracy (finite-difference normals divide
        differences of the density at points 1/max_res apart, which bf16/fp16/TF32 rounding would swamp)."""
        return encode(self.encoding, self.mlp, self._unit(x), None if exact else self.mlp_dtype, replay, exact)

    def density_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Density before the activation (raw + blob) [N]: monotone in sigma, smooth far from the object."""
        return self._raw(x)[:, 0] + self.blob(x)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma(x) >= 0 [N] for world points x [N,3]."""
        return F.softplus(self.density_pre(x))

    def probe(self, x: torch.Tensor) -> tuple[torch.Tensor, Encoded | None]:
        """sigma(x) [N] without gradients, and what forward(x, replay=...) at the same points reuses instead of
        running the network again (None where the encoding cannot replay)."""
        if not replays(self.encoding):
            with torch.no_grad():
                return self.density(x), None
        raw, kept = probe(self.encoding, self.mlp, self._unit(x), self.mlp_dtype)
        return F.softplus(raw[:, 0] + self.blob(x)), kept

    def forward(self, x: torch.Tensor, with_normal: bool = False, replay: Encoded | None = None):
        """(sigma [N], albedo [N,3] in [0,1]) at world points x [N,3]; with_normal adds normal(x) [N,3] from the
        same network pass (4 points per sample instead of 1 + 6). `replay`: `probe`'s values at x (without
        normals: they need points that probe did not visit)."""
        n = x.shape[0]
        pts = x
        if with_normal:
            if replay is not None:
                raise ValueError("A probe's values cannot be replayed with normals.")
            steps = torch.eye(3, device=x.device, dtype=x.dtype) * self.normal_eps
            pts = torch.cat([x[None], x[None] + steps[:, None, :]]).reshape(-1, 3)  # [4N,3]
        raw = self._raw(pts, exact=with_normal, replay=replay)
        pre = raw[:, 0] + self.blob(pts)
        sigma, albedo = F.softplus(pre[:n]), torch.sigmoid(raw[:n, 1:])
        if not with_normal:
            return sigma, albedo
        grad = (pre[n:].reshape(3, n) - pre[:n]).T / self.normal_eps  # [N,3]
        return sigma, albedo, -grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """Outward unit normals [N,3] = −∇σ/‖∇σ‖ by forward differences of the pre-activation density
        (differentiable w.r.t. the field; the activation is monotone so the direction is the same)."""
        return self.forward(x, with_normal=True)[2]


class Background(nn.Module):
    """Colour seen where rays leave the scene, as a function of view direction [N,3] → rgb [N,3].

    Object mode: a low-frequency colour field over directions (degree-2 Fourier features → tiny MLP), started
    near white. Low capacity so the background cannot paint the object for the diffusion prior, and white
    because diffusion models draw isolated objects on light backdrops, so early renders look familiar to the
    prior and the object separates from it. Scene mode gets higher frequencies (it is the far scenery).
    """

    def __init__(self, cfg: NerfConfig | None = None, init_rgb: float = 0.9):
        super().__init__()
        mode = cfg.mode if cfg is not None else "object"
        self.n_freqs = 2 if mode == "object" else 6
        in_dim = 3 + 6 * self.n_freqs
        self.mlp = nn.Sequential(nn.Linear(in_dim, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.1)
            self.mlp[-1].bias.fill_(float(torch.logit(torch.tensor(init_rgb))))

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        freqs = 2.0 ** torch.arange(self.n_freqs, device=dirs.device, dtype=dirs.dtype)
        ang = dirs[:, None, :] * freqs[:, None] * torch.pi  # [N,F,3]
        feats = torch.cat([dirs, torch.sin(ang).flatten(1), torch.cos(ang).flatten(1)], dim=-1)
        return torch.sigmoid(self.mlp(feats))
