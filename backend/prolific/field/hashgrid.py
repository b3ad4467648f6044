"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022).

`make_hash_encoding` returns the implementation a config names: `TorchHashGrid`, our vectorised PyTorch version
(the CPU path), `TritonHashGrid` (the same grid with kernels/hashgrid.py's fused kernels, the default on CUDA) or
tiny-cuda-nn's HashGrid. All take points in [0,1]^3 and return fp32 features [N, n_levels * n_features].
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import BadRequest
from ..kernels import triton_available

# Instant-NGP's spatial hash primes (the first is 1 so neighbouring x stay coherent in memory).
_PRIMES = (1, 2654435761, 805459861)
INIT_SCALE = 1e-4


def level_scale(n_levels: int, base_res: int, max_res: int) -> float:
    """Growth factor b between consecutive levels so that level L-1 has resolution max_res."""
    if n_levels <= 1:
        return 1.0
    return math.exp((math.log(max_res) - math.log(base_res)) / (n_levels - 1))


class TorchHashGrid(nn.Module):
    """Hash grid in plain PyTorch, vectorised over levels: one gather fetches all levels' 8 corners.

    Level l has res_l = floor(base_res * b^l) cells per axis, i.e. (res_l + 1)^3 vertices. Levels whose vertices
    fit in the table are indexed densely (no collisions); finer ones use the spatial hash. Features are
    trilinearly interpolated, so the output is continuous in x and each point's gradient reaches only its
    8 corners per level. The lookup runs in chunks through `_HashGridFunction`, which keeps only x for backward;
    gradients flow to the table and to x (first order only).
    """

    impl = "torch"
    replays = True  # forward(x, replay=features): the features of an earlier no-grad call at x, backward as usual

    def __init__(self, n_levels: int = 16, n_features: int = 2, log2_size: int = 19, base_res: int = 16,
                 max_res: int = 2048):
        super().__init__()
        self.n_levels, self.n_features = n_levels, n_features
        self.out_dim = n_levels * n_features
        table = 2 ** log2_size
        b = level_scale(n_levels, base_res, max_res)
        res = [int(math.floor(base_res * b ** level + 1e-6)) for level in range(n_levels)]
        dense = [(r + 1) ** 3 <= table for r in res]
        sizes = [(r + 1) ** 3 if d else table for r, d in zip(res, dense)]
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.resolutions = res
        self.n_dense = sum(dense)  # levels grow finer, so the dense ones come first
        # Per level and axis the multiplier of a vertex coordinate: strides (1, R+1, (R+1)^2) for dense levels,
        # the hash primes otherwise. A vertex's row is the sum (dense) or XOR (hashed) of the three products
        # masked to the table, plus the level's offset. Masking each product first is exact for both: dense rows
        # are below the table size, and masking commutes with XOR.
        mult = [[1, r + 1, (r + 1) ** 2] if d else list(_PRIMES) for r, d in zip(res, dense)]
        self.register_buffer("_res", torch.tensor(res, dtype=torch.int64), persistent=False)
        self.register_buffer("_dense", torch.tensor(dense), persistent=False)
        self.register_buffer("_mult", torch.tensor(mult, dtype=torch.int64), persistent=False)
        self.register_buffer("_offsets", torch.tensor(offsets, dtype=torch.int32), persistent=False)
        self._mask = table - 1
        # The CPU path's lookup in 32-bit integers: (c·p) mod 2^k = (c·(p mod 2^k)) mod 2^k, so with the
        # primes masked to the table first a product stays below max_res·table; where that exceeds int32 the
        # products are formed in int64. Rows, offsets included, always fit int32.
        self._narrow = (max(res) + 1) * table < 2**31
        mult32 = [[m & self._mask for m in row] for row in mult]
        self.register_buffer("_mult32", torch.tensor(mult32, dtype=torch.int32 if self._narrow else torch.int64),
                             persistent=False)
        self.params = nn.Parameter(torch.empty(sum(sizes), n_features).uniform_(-INIT_SCALE, INIT_SCALE))

    def corners(self, x: torch.Tensor, with_dx: bool = False):
        """Table rows [L,8,N] (int32) and trilinear weights [L,8,N] of the 8 corners per level for x [N,3] in
        [0,1]; with_dx also the weights' derivatives d w / d x [3,L,8,N]. Corner c = 4*cx + 2*cy + cz."""
        n, n_levels, k = x.shape[0], self.n_levels, self.n_dense
        res = self._res.to(x.dtype)[:, None, None]
        # Points are the innermost dimension throughout, so every broadcast below runs over contiguous memory.
        pos = res * x.T  # [L,3,N]
        cell = torch.minimum(pos.floor(), res - 1)  # x = 1 lies in the last cell
        frac = pos - cell
        # Corners are separable: per axis the lower and upper vertex [L,3,2,N]; broadcasting the three axes
        # builds the rows and weights of all 8 corners [L,2,2,2,N] with a few full-size ops, written in place.
        coord = cell.to(self._mult32.dtype)[:, :, None, :] + torch.arange(2, device=x.device,
                                                                         dtype=self._mult32.dtype)[:, None]
        t = ((coord * self._mult32[:, :, None, None]) & self._mask).int()
        tx, ty, tz = t[:, 0, :, None, None, :], t[:, 1, None, :, None, :], t[:, 2, None, None, :, :]
        rows = torch.empty(n_levels, 2, 2, 2, n, dtype=torch.int32, device=x.device)
        torch.add(tx[:k] + ty[:k], tz[:k], out=rows[:k])
        torch.bitwise_xor(tx[k:] ^ ty[k:], tz[k:], out=rows[k:])
        rows += self._offsets[:, None, None, None, None]
        wts = torch.stack([1 - frac, frac], dim=2)  # [L,3,2,N]
        wx, wy, wz = wts[:, 0, :, None, None, :], wts[:, 1, None, :, None, :], wts[:, 2, None, None, :, :]
        w = (wx * wy * wz).view(n_levels, 8, n)
        dw = None
        if with_dx:
            sign = torch.tensor([-1.0, 1.0], device=x.device, dtype=x.dtype)
            sx, sy, sz = sign[:, None, None, None], sign[None, :, None, None], sign[None, None, :, None]
            dw = torch.stack([(sx * wy * wz).reshape(n_levels, 8, n), (wx * sy * wz).reshape(n_levels, 8, n),
                              (wx * wy * sz).reshape(n_levels, 8, n)]) * res[None]
        return rows.view(n_levels, 8, n), w, dw

    def forward(self, x: torch.Tensor, replay: torch.Tensor | None = None) -> torch.Tensor:
        return _HashGridFunction.apply(x.float().clamp(0.0, 1.0), self.params, self, replay)


def gather_rows(params: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """params[rows] for int32 rows of any shape: [*rows.shape, F]. With 2 fp32 features a row is fetched as one
    8-byte word (a 1-D index_select), which on a CPU is several times faster than advanced indexing."""
    flat = rows.reshape(-1)
    if params.shape[1] * params.element_size() == 8 and params.is_contiguous():
        picked = params.view(torch.int64).view(-1).index_select(0, flat).view(params.dtype)
    else:
        picked = params.index_select(0, flat)
    return picked.view(*rows.shape, params.shape[1])


class _HashGridFunction(torch.autograd.Function):
    """Interpolated lookup in chunks of points. Backward recomputes rows and weights instead of saving them,
    so a render of millions of samples keeps only x for the backward pass (plain autograd would keep ~64
    bytes per point and level); for the same reason a `replay` (the features an earlier call computed at x)
    can stand in for the forward."""

    # Entries of one [L,8,chunk] tensor: on a CPU chunks whose temporaries stay in cache (2^19 was among the
    # fastest of 2^16..2^25 for the demo grid on a 2-core CPU), on a GPU large ones: every op is a launch.
    CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 25}

    @staticmethod
    def chunk(x: torch.Tensor, n_levels: int) -> int:
        sizes = _HashGridFunction.CHUNK_ELEMENTS
        elements = sizes.get(x.device.type, sizes["cuda"])  # other accelerators launch kernels too
        return max(1, elements // (8 * n_levels))

    @staticmethod
    def forward(ctx, x, params, grid, replay):
        ctx.grid = grid
        ctx.save_for_backward(x, params)
        if replay is not None:
            return replay
        n, n_levels, n_feat = x.shape[0], grid.n_levels, grid.n_features
        out = x.new_empty(n, n_levels * n_feat)
        chunk = _HashGridFunction.chunk(x, n_levels)
        for s in range(0, n, chunk):
            rows, w, _ = grid.corners(x[s:s + chunk])
            blended = (w[..., None] * gather_rows(params, rows)).sum(1)  # [L,m,F]
            out[s:s + chunk] = blended.permute(1, 0, 2).reshape(-1, n_levels * n_feat)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, params = ctx.saved_tensors
        grid = ctx.grid
        n, n_levels, n_feat = x.shape[0], grid.n_levels, grid.n_features
        want_x, want_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if want_x else None
        grad_params = torch.zeros_like(params) if want_params else None
        chunk = _HashGridFunction.chunk(x, n_levels)
        for s in range(0, n, chunk):
            rows, w, dw = grid.corners(x[s:s + chunk], with_dx=want_x)
            g = grad_out[s:s + chunk].reshape(-1, n_levels, n_feat).permute(1, 0, 2)[:, None]  # [L,1,m,F]
            if want_params:
                # int64 rows: a CPU index_add_ with int32 indices takes a path ~17x slower
                grad_params.index_add_(0, rows.reshape(-1).long(), (w[..., None] * g).reshape(-1, n_feat))
            if want_x:
                per_corner = (gather_rows(params, rows) * g).sum(-1)  # [L,8,m]
                grad_x[s:s + chunk] = (dw * per_corner).sum((1, 2)).T
        return grad_x, grad_params, None, None


# Levels this coarse or coarser merge runs of points in one cell before their backward's atomics: neighbouring
# samples of a ray are one march step apart, ~1/300 of the cube at the standard 512 steps, so finer cells rarely
# hold two in a row (`prolific bench hashgrid --merge-max-res` times other choices).
MERGE_MAX_RES = 512
# Off until measured (issue 12): the backward adding a cell's x_lo and x_hi rows as one 16-byte atomic where they
# are an aligned pair, half the cells of a hashed level (`prolific bench hashgrid --pair-rows off,on` times it).
PAIR_ROWS = False


class TritonHashGrid(TorchHashGrid):
    """`TorchHashGrid` with the fused Triton lookup of kernels/hashgrid.py (CUDA tensors; CPU ones under
    TRITON_INTERPRET=1): the same parameters, so checkpoints load in either. `merge_max_res`: the finest level
    resolution whose backward merges runs of points in one cell before adding to the table; `pair_rows`: whether
    it adds aligned pairs of rows as one vector atomic."""

    impl = "triton"

    def __init__(self, *args, merge_max_res: int = MERGE_MAX_RES, pair_rows: bool = PAIR_ROWS, **kwargs):
        super().__init__(*args, **kwargs)
        self.merge_max_res, self.pair_rows = merge_max_res, pair_rows

    def forward(self, x: torch.Tensor, level_major: bool = False, replay: torch.Tensor | None = None) -> torch.Tensor:
        """[N, out_dim], or with `level_major` [n_levels, N, n_features] (what a `TritonMLP` reads without the
        transposition); `replay` as `TorchHashGrid`'s, in the layout asked for."""
        from ..kernels.hashgrid import hash_encode  # imports triton: only where this grid is built

        return hash_encode(x.float().clamp(0.0, 1.0).contiguous(), self.params, self, level_major, replay)


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn's HashGrid behind the same interface (fp32 in and out, CUDA only)."""

    impl = "tcnn"
    replays = False  # its forward cannot be skipped: the tcnn module keeps its own state for backward

    def __init__(self, n_levels: int, n_features: int, log2_size: int, base_res: int, max_res: int):
        super().__init__()
        import tinycudann as tcnn

        self.n_levels, self.n_features = n_levels, n_features
        self.out_dim = n_levels * n_features
        self.encoding = tcnn.Encoding(3, {
            "otype": "HashGrid", "n_levels": n_levels, "n_features_per_level": n_features,
            "log2_hashmap_size": log2_size, "base_resolution": base_res,
            "per_level_scale": level_scale(n_levels, base_res, max_res),
        }, dtype=torch.float32)
        with torch.no_grad():
            self.encoding.params.uniform_(-INIT_SCALE, INIT_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x.float().clamp(0.0, 1.0).contiguous()).float()


def tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
    except Exception:  # a broken CUDA extension raises more than ImportError
        return False
    return True


def make_hash_encoding(n_levels: int = 16, n_features: int = 2, log2_size: int = 19, base_res: int = 16,
                       max_res: int = 2048, device: torch.device | str | None = None, impl: str = "auto",
                       merge_max_res: int = MERGE_MAX_RES, pair_rows: bool = PAIR_ROWS) -> nn.Module:
    """The hash encoding `impl` names, on `device` (CPU when None): torch (`TorchHashGrid`), triton (the fused
    kernels, CUDA; `merge_max_res` and `pair_rows` its backward's, TritonHashGrid), tcnn (tiny-cuda-nn, CUDA), or
    auto = triton on CUDA when it imports, else torch.

    forward(x [N,3] in [0,1]) -> [N, out_dim] fp32."""
    device = torch.device(device or "cpu")
    if impl == "auto":
        impl = "triton" if device.type == "cuda" and triton_available() else "torch"
    args = (n_levels, n_features, log2_size, base_res, max_res)
    if impl != "torch" and device.type != "cuda":
        raise BadRequest(f"The {impl} hash grid needs a CUDA device: set hash_grid.impl to auto or torch.")
    if impl == "triton":
        if not triton_available():
            raise BadRequest("hash_grid.impl triton needs the triton package (it ships with torch's Linux CUDA "
                             "builds): set hash_grid.impl to auto or torch.")

        return TritonHashGrid(*args, merge_max_res=merge_max_res, pair_rows=pair_rows).to(device)
    if impl == "tcnn":
        if not tcnn_available():
            raise BadRequest("hash_grid.impl tcnn needs tinycudann installed: set hash_grid.impl to auto or torch.")
        with torch.cuda.device(device):
            return TcnnHashGrid(*args).to(device)
    return TorchHashGrid(*args).to(device)
