"""Diagnosis (issue 12), not a bench: the fused MLP's kernels at the stage-1 NeRF's shape (level-major 16×2
features → 64 → 64 → 4) over rows per block × warps × product precision, with the landed kernels (git's
kernels/mlp.py before the weights were hoisted, copied to .gpu/mlp_landed.py) and PyTorch's fp32 layers.
Error: the weight gradients' largest deviation from float64, relative to their largest entry (on 1M rows; rows
near a ReLU's kink flip under any rounding, so this is no precision measure of its own). sweep.txt is its run at
the call of ../2026-12-02_h200_density_replay/call1.sh, which also tried bf16 products (they did not compile;
since dropped from the kernels).
python sweep.py [rows]"""
import importlib.util, itertools, statistics, sys
import torch
from prolific.kernels import mlp as K

N = int(float(sys.argv[1])) if len(sys.argv) > 1 else 12_000_000
dev = torch.device("cuda")
torch.manual_seed(0)
L, F, H, OUT = 16, 2, 64, 4
x = torch.randn(L, N, F, device=dev) * 0.3
g = torch.randn(N, OUT, device=dev)
params = [torch.randn(H, L * F, device=dev) / 6, torch.randn(H, device=dev) * 0.1,
          torch.randn(H, H, device=dev) / 8, torch.randn(H, device=dev) * 0.1,
          torch.randn(OUT, H, device=dev) / 8, torch.zeros(OUT, device=dev)]


def timed(fn, reps=10):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def reference():
    """float64 weight gradients on the first 1M rows (the error check's subset)."""
    m = 1_000_000
    xd = x[:, :m].permute(1, 0, 2).reshape(m, -1).double()
    ps = [p.double().requires_grad_() for p in params]
    h1 = torch.relu(xd @ ps[0].T + ps[1]); h = torch.relu(h1 @ ps[2].T + ps[3]); y = h @ ps[4].T + ps[5]
    (y * g[:m].double()).sum().backward()
    return [p.grad for p in ps]


ref = reference()
xs = x[:, :1_000_000].contiguous()


def error(grads):
    return max(float((a.double() - b).abs().max() / b.abs().max()) for a, b in zip(grads, ref))


print(f"rows {N/1e6:.1f}M; ms per call, median of 10")
spec = importlib.util.spec_from_file_location("mlp_landed", ".gpu/mlp_landed.py")
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
xr = x.requires_grad_()
fwd = timed(lambda: old.fused_mlp(x.detach(), params))
def old_bwd():
    xi = x.detach().requires_grad_()
    pi = [p.detach().requires_grad_() for p in params]
    y = old.fused_mlp(xi, pi)
    y.backward(g)
    return [p.grad for p in pi]
total = timed(old_bwd)
print(f"landed: forward {fwd:.2f}  forward+backward {total:.2f} -> backward {total - fwd:.2f}")
xt = x.detach().permute(1, 0, 2).reshape(N, -1).contiguous()
lin = [torch.nn.Linear(L * F, H), torch.nn.ReLU(), torch.nn.Linear(H, H), torch.nn.ReLU(), torch.nn.Linear(H, OUT)]
seq = torch.nn.Sequential(*lin).to(dev)
torch.backends.cuda.matmul.allow_tf32 = False
print(f"pytorch fp32 layers: forward {timed(lambda: seq(xt)):.2f}  forward+backward "
      f"{timed(lambda: seq(xt.requires_grad_()).backward(g)):.2f}")

for block, warps, dot in itertools.product((32, 64, 128), (4, 8), K.PRECISIONS):
    try:
        t = timed(lambda: K.mlp_forward(x.detach(), params, dot, block, warps))
        print(f"forward  block {block:3d} warps {warps} {dot:6s}: {t:6.2f}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"forward  block {block:3d} warps {warps} {dot:6s}: failed {type(e).__name__} {str(e)[:120]}")
for block, warps, dot, per_sm in itertools.product((16, 32, 64), (4, 8), K.PRECISIONS, (1, 2, 4)):
    try:
        t = timed(lambda: K.mlp_backward(x.detach(), g, params, True, dot, block, warps, per_sm))
        err = error(K.mlp_backward(xs, g[:1_000_000], params, True, dot, block, warps, per_sm)[1:])
        print(f"backward block {block:3d} warps {warps} {dot:6s} per-SM {per_sm}: {t:6.2f}  error {err:.1e}", flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"backward block {block:3d} warps {warps} {dot:6s} per-SM {per_sm}: failed {type(e).__name__} "
              f"{str(e)[:120]}")
