"""Throwaway diagnosis (issue 12), not a benchmark: where a stage-1 step at 512 px goes on the GPU with `best`
(+ the options in argv[2]), on --field argv[1]. Kernel table of 3 steps after warm-up, GPU busy time (the union of
all streams' kernels) against the wall, kernel time by kind, and the elementwise kernels by the op (or graph
replay) that launched them.
python profile_512.py solid|blob [extra,options]"""
import bisect, json, re, sys, statistics, tempfile, time
from collections import defaultdict
import torch
from torch.profiler import profile, ProfilerActivity
from prolific.config import make_config
from prolific.speed_options import SpeedOptions
from prolific.bench import common, stage1 as b1
from prolific.stages import nerf as ns

field = sys.argv[1]
opts = SpeedOptions.parse("best" + ("," + sys.argv[2] if len(sys.argv) > 2 else ""))
dev = torch.device("cuda")
args = type("A", (), {"model": "sd21", "model_cache": None, "seed": 0})()
model = common.prepare_model(args, dev)
cfg = make_config(common.PROMPT, "standard", {"device": "cuda"})
v = b1.build_variant(opts, False, cfg, model, dev, 0, 1, field=field)
prompt = v.prior.embed_prompt(common.PROMPT, cfg.prior.negative_prompt, cfg.prior.view_dependent_prompt)
ctx = b1.bench_context(cfg, 512, dev, torch.Generator(dev).manual_seed(0), prompt)
ns.update_occupancy(v.particles, ctx.generators)
step = lambda i: ns.train_step(ctx, v.particles, v.optimizers, v.distill, i)
for i in range(5):
    step(i)
torch.cuda.synchronize()
walls = []
for i in range(6):
    t = time.perf_counter(); step(10 + i); torch.cuda.synchronize(); walls.append((time.perf_counter() - t) * 1e3)
print(f"{field} {opts.label()} 512px wall per step (synchronised each): median {statistics.median(walls):.1f} ms, all "
      + " ".join(f"{w:.1f}" for w in walls), flush=True)
N = 3
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
    t0 = time.perf_counter()
    for i in range(N):
        step(100 + i)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) * 1e3 / N
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=90))
print("index / gather / copy ops by input shape (CUDA time of their kernels, 3 steps):")
ops = [e for e in prof.key_averages(group_by_input_shape=True)
       if re.search(r"index|gather|take|copy_|cat|nonzero|cumsum|repeat_interleave", e.key)]
for e in sorted(ops, key=lambda e: -e.device_time_total)[:30]:
    print(f"  {e.key:28s} {e.device_time_total / 1e3:8.2f} ms  x{e.count:<4d} {str(e.input_shapes)[:140]}")
trace = tempfile.mktemp(suffix=".json")
prof.export_chrome_trace(trace)
allev = json.load(open(trace))["traceEvents"]
events = [e for e in allev if e.get("cat") == "kernel"]
spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events)
busy, end = 0.0, -1.0
for a, b in spans:
    if b > end:
        busy += b - max(a, end)
        end = b
streams = defaultdict(float)
kinds = defaultdict(float)
rules = [("hash grid", r"_hashgrid"), ("fused MLP", r"_mlp_"), ("march / composite", r"^_walk|^_composite"),
         ("group norm", r"^_gn_"), ("lora", r"^_down|^_up|^_bwd_h|^_bwd_x"), ("layout conversion", r"nchwToNhwc|nhwcToNchw"),
         ("gather / index", r"gather|index|scatter"), ("attention", r"sdpa|flash|fmha|attention"),
         ("conv / gemm", r"gemm|xmma|cutlass|conv|wgmma|sm90|splitK|cublas"),
         ("adam", r"adam|Adam|multi_tensor"), ("reduce / scan", r"reduce|scan|cumsum|Reduce"),
         ("copy", r"direct_copy|copy_kernel"), ("elementwise", r"elementwise|Functor")]
# the CPU op that launched each kernel: runtime launch events share the kernel's correlation id and sit inside it
runtime = {e["args"]["correlation"]: e for e in allev if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
ops = sorted((e for e in allev if e.get("cat") == "cpu_op"), key=lambda e: e["ts"])
starts = [o["ts"] for o in ops]
def enclosing(r):
    i = bisect.bisect_right(starts, r["ts"]) - 1
    while i >= 0:
        o = ops[i]
        if o.get("tid") == r.get("tid") and o["ts"] + o["dur"] >= r["ts"]:
            return o["name"] + " " + str(o["args"].get("Input Dims", ""))[:70]
        if r["ts"] - o["ts"] > 5e5:
            break
        i -= 1
    return "?"
def launcher(k):
    r = runtime.get(k["args"].get("correlation"))
    if r is None:
        return "?"
    return ("graph replay in " if "Graph" in r["name"] else "") + enclosing(r)
by_launcher = defaultdict(lambda: [0.0, 0])
for e in events:
    streams[e["args"].get("stream")] += e["dur"]
    name = e["name"]
    kind = next((k for k, pat in rules if re.search(pat, name)), "other")
    kinds[kind] += e["dur"]
    if kind in ("copy", "elementwise", "other", "reduce / scan", "gather / index"):
        key = (kind, name[:60], launcher(e))
        by_launcher[key][0] += e["dur"]; by_launcher[key][1] += 1
print(f"per step: wall {wall:.1f} ms (profiled), GPU busy {busy / 1e3 / N:.1f} ms, kernel time "
      f"{sum(streams.values()) / 1e3 / N:.1f} ms; by stream " + ", ".join(f"{s}: {t / 1e3 / N:.1f}" for s, t in streams.items()))
for k, t in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f"  {k:22s} {t / 1e3 / N:7.2f} ms/step")
print("copy / elementwise / other / reduce / gather kernels by launcher (per step):")
for (kind, name, who), (t, n) in sorted(by_launcher.items(), key=lambda kv: -kv[1][0])[:45]:
    print(f"  {t / 1e3 / N:6.2f} ms x{n / N:5.0f}  {kind:12s} {name:60s} <- {who}")
v.close()
