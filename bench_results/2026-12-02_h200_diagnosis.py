"""Throwaway diagnosis (issue 12): where the VAE encode and a stage-1 NeRF render go (not a benchmark)."""
import sys, time, statistics
import torch
from torch.profiler import profile, ProfilerActivity
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from prolific.bench.sd_shapes import build_sd_shaped_model
from prolific.prior.diffusion import load_prior

dev = torch.device("cuda")
part = sys.argv[1]

def timed(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(); a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)

def table(fn, n=30):
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(); torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=n, max_name_column_width=90))

if part == "vae":
    folder = build_sd_shaped_model("/tmp/prolific-bench/sd21", "sd21", device=dev, dtype=torch.float16, seed=0)
    prior = load_prior(str(folder), dev, torch.bfloat16)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    vae = prior.vae
    for bs in (1, 4):
        x = torch.rand(bs, 3, 512, 512, device=dev, requires_grad=True)
        def step():
            lat = prior.encode_images(x)
            lat.sum().backward()
        for layout in ("channels_last", "contiguous"):
            vae.to(memory_format=getattr(torch, layout + ("_format" if layout == "contiguous" else "")))
            for name, proc in (("sdpa", AttnProcessor2_0()), ("classic", AttnProcessor())):
                vae.set_attn_processor(proc)
                for bench_mode in (False, True):
                    torch.backends.cudnn.benchmark = bench_mode
                    print(f"vae b{bs} {layout} {name} cudnn.benchmark={bench_mode}: {timed(step):.2f} ms", flush=True)
        torch.backends.cudnn.benchmark = False
    vae.to(memory_format=torch.channels_last); vae.set_attn_processor(AttnProcessor2_0())
    x = torch.rand(1, 3, 512, 512, device=dev, requires_grad=True)
    table(lambda: prior.encode_images(x).sum().backward())
    vae.set_attn_processor(AttnProcessor())
    table(lambda: prior.encode_images(x).sum().backward(), 15)

if part == "render":
    from prolific.config import make_config
    from prolific.stages import nerf as nerf_stage
    from prolific.render.cameras import sample_cameras
    from prolific.render import packed
    cfg = make_config("x", "standard", {"device": "cuda"})
    torch.manual_seed(0)
    p = nerf_stage.make_particle(cfg.nerf, cfg.hash_grid, dev)
    g = torch.Generator(dev).manual_seed(0)
    nerf_stage.update_occupancy([p], [g])
    cams = sample_cameras(1, cfg.cameras, g, dev)
    for res in (64, 512):
        def step():
            r = p.renderer(p.nerf, p.background, cams, res, res, shading="albedo", occupancy=p.occupancy, generator=g)
            (r["rgb"].mean() + r["opacity"].mean()).backward()
            p.nerf.zero_grad(set_to_none=True); p.background.zero_grad(set_to_none=True)
            return r["n_samples"]
        def wall():
            torch.cuda.synchronize(); t = time.perf_counter(); step(); torch.cuda.synchronize()
            return (time.perf_counter() - t) * 1e3
        for _ in range(3): step()
        print(f"render {res}: wall {statistics.median([wall() for _ in range(8)]):.2f} ms, kept {step()}", flush=True)
        for rounds in (32, 10**6):
            packed._prune.__defaults__ = (rounds,)  # throwaway: one pass vs rounds
            for _ in range(2): step()
            print(f"render {res} first_round={rounds}: wall {statistics.median([wall() for _ in range(8)]):.2f} ms", flush=True)
        packed._prune.__defaults__ = (32,)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step(); torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=70))

if part == "step":
    from prolific.bench import stage1
    stage1.run(["--opt", "bf16,tf32,sdpa,channels-last,batch,fused-adam", "--resolutions", "64", "--steps", "1", "--warmup", "1"])
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        stage1.run(["--opt", "bf16,tf32,sdpa,channels-last,batch,fused-adam", "--resolutions", "64", "--steps", "2", "--warmup", "1"])
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=45, max_name_column_width=90))

if part == "stage2":
    from prolific.bench import mesh_stages
    opts = ["--opt", "bf16,tf32,sdpa,channels-last,batch,fused-adam", "--steps", "1", "--warmup", "1"]
    mesh_stages.run("stage2", opts)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        mesh_stages.run("stage2", opts)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
