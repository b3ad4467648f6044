"""A diagnosis, not a bench: how fast the density rounds' value moves run at the stage-1 512 px sizes: `_select`
(Encoded.take's level-major gather, 8-byte words) and Encoded.assemble's index_copy_, against a plain copy of the
same bytes, on [16, N, 2] fp32 features with ascending kept rows (a fraction of N)."""
import sys
import torch
import triton
import triton.language as tl
sys.path.insert(0, "backend")
from prolific.field.mlp import _select

@triton.jit
def _take_levels(src, idx, dst, N, K, L: tl.constexpr, BLOCK: tl.constexpr):
    """dst[l, j] = src[l, idx[j]] for 8-byte words: the index read once for every level."""
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = j < K
    i = tl.load(idx + j, mask=m, other=0)
    for lv in tl.static_range(L):
        tl.store(dst + lv * K + j, tl.load(src + lv * N + i, mask=m), mask=m)


def take_levels(src, idx):
    words = src.view(torch.int64).squeeze(-1)
    out = words.new_empty(words.shape[0], idx.numel())
    _take_levels[(triton.cdiv(idx.numel(), 1024),)](words, idx, out, words.shape[1], idx.numel(), L=words.shape[0],
                                                    BLOCK=1024)
    return out.unsqueeze(-1).view(src.dtype)


def timed(fn, reps=10):
    fn(); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record(); torch.cuda.synchronize()
    return start.elapsed_time(end) / reps

for n, frac in ((4 << 20, 0.7), (8 << 20, 0.7), (8 << 20, 0.3)):
    src = torch.randn(16, n, 2, device="cuda")
    rows = (torch.rand(n, device="cuda") < frac).nonzero().squeeze(1)
    k = rows.numel()
    dst = torch.empty(16, k, 2, device="cuda")
    perm = torch.randperm(k, device="cuda").sort().values
    taken = _select(src, 1, rows)
    t_take = timed(lambda: _select(src, 1, rows))
    assert torch.equal(take_levels(src, rows), taken)
    t_triton = timed(lambda: take_levels(src, rows))
    t_copy = timed(lambda: dst.copy_(src[:, :k]))
    t_place = timed(lambda: dst.index_copy_(1, perm, taken))
    gb = 2 * 16 * k * 8 / 1e9
    print(f"N={n} kept={k}: take {t_take:.3f} ms ({gb / t_take:.0f} GB/s moved), index_copy {t_place:.3f} ms, "
          f"triton take {t_triton:.3f} ms ({gb / t_triton:.0f} GB/s), plain copy {t_copy:.3f} ms ({gb / t_copy:.0f} GB/s)")
