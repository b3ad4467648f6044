"""Packed ray marching as Triton kernels: `walk_lattice`, the fused twin of `render/march.walk_lattice` (same
arguments and samples).

One program walks BLOCK rays along their lattices t_k = entry + (k + u)·step, k < n_steps, looking up each
point's occupancy cell in registers. Two passes with the same walk: the first counts each ray's samples in
occupied cells, a cumulative sum turns the counts into offsets (the one host sync, to size the output), the
second writes ray index and t of each sample at its ray's offset. Nothing of size rays × steps is stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128


@triton.jit
def _walk(o_ptr, d_ptr, entry_ptr, u_ptr, n_ptr, occ_ptr, count_ptr, off_ptr, ray_ptr, t_ptr, R, step, bound, res,
          HAS_GRID: tl.constexpr, WRITE: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = r < R
    o0 = tl.load(o_ptr + r * 3, mask=m, other=0.0)
    o1 = tl.load(o_ptr + r * 3 + 1, mask=m, other=0.0)
    o2 = tl.load(o_ptr + r * 3 + 2, mask=m, other=0.0)
    d0 = tl.load(d_ptr + r * 3, mask=m, other=0.0)
    d1 = tl.load(d_ptr + r * 3 + 1, mask=m, other=0.0)
    d2 = tl.load(d_ptr + r * 3 + 2, mask=m, other=0.0)
    entry = tl.load(entry_ptr + r, mask=m, other=0.0)
    u = tl.load(u_ptr + r, mask=m, other=0.0)
    n_steps = tl.load(n_ptr + r, mask=m, other=0)
    pos = tl.load(off_ptr + r, mask=m, other=0) if WRITE else tl.zeros([BLOCK], dtype=tl.int64)
    for k in range(0, tl.max(n_steps, axis=0)):
        t = entry + (k + u) * step
        keep = k < n_steps
        if HAS_GRID:
            # The same float operations, in the same order, as OccupancyGrid.lookup.
            p0 = o0 + t * d0
            p1 = o1 + t * d1
            p2 = o2 + t * d2
            inside = (tl.abs(p0) <= bound) & (tl.abs(p1) <= bound) & (tl.abs(p2) <= bound)
            i0 = tl.minimum(tl.maximum(((p0 + bound) / (2 * bound) * res).to(tl.int32), 0), res - 1)
            i1 = tl.minimum(tl.maximum(((p1 + bound) / (2 * bound) * res).to(tl.int32), 0), res - 1)
            i2 = tl.minimum(tl.maximum(((p2 + bound) / (2 * bound) * res).to(tl.int32), 0), res - 1)
            keep = keep & inside
            keep = keep & (tl.load(occ_ptr + (i0 * res + i1) * res + i2, mask=keep, other=0) != 0)
        if WRITE:
            tl.store(ray_ptr + pos, r.to(tl.int64), mask=keep)
            tl.store(t_ptr + pos, t, mask=keep)
        pos += keep.to(tl.int64)
    if not WRITE:
        tl.store(count_ptr + r, pos, mask=m)


def walk_lattice(origins: torch.Tensor, dirs: torch.Tensor, entry: torch.Tensor, u: torch.Tensor,
                 n_steps: torch.Tensor, step: float, occupancy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ray [N], t [N], offsets [R+1]) of the lattice points t_k = entry + (k + u)·step, k < n_steps, of rays
    origins/dirs [R,3] that lie in occupied cells of `occupancy` (an OccupancyGrid, or None for all of them)."""
    R, device = origins.shape[0], origins.device
    o, d = origins.float().contiguous(), dirs.float().contiguous()
    entry, u = entry.float().contiguous(), u.float().contiguous()
    n_steps = n_steps.to(torch.int32).contiguous()
    has_grid = occupancy is not None
    # Pointers a pass does not read (HAS_GRID / WRITE off) get any tensor of the device.
    occ = occupancy.occupied.reshape(-1).view(torch.uint8) if has_grid else n_steps
    res, bound = (occupancy.res, occupancy.bound) if has_grid else (1, 1.0)
    counts = torch.zeros(R, dtype=torch.int64, device=device)
    offsets = torch.zeros(R + 1, dtype=torch.int64, device=device)
    if R == 0:
        return counts, entry, offsets
    grid = (triton.cdiv(R, BLOCK),)
    args = (o, d, entry, u, n_steps, occ)
    _walk[grid](*args, counts, offsets, counts, entry, R, step, bound, res, HAS_GRID=has_grid, WRITE=False,
                BLOCK=BLOCK)
    torch.cumsum(counts, 0, out=offsets[1:])
    total = int(offsets[-1])
    ray = torch.empty(total, dtype=torch.int64, device=device)
    t = torch.empty(total, dtype=torch.float32, device=device)
    if total > 0:
        _walk[grid](*args, counts, offsets, ray, t, R, step, bound, res, HAS_GRID=has_grid, WRITE=True,
                    BLOCK=BLOCK)
    return ray, t, offsets
