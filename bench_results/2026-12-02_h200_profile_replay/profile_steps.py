"""Throwaway diagnosis (issue 12), not a benchmark: where a stage-1 step at 512 and a stage-2 step go on the GPU.
Kernel tables of a few steps after warm-up, with the step's parts as profiler ranges (stage 1 also the packed
renderer's march, density rounds, assembly of the replayed values, field pass and compositing).
python profile_steps.py stage1|stage2 [model]"""
import contextlib, dataclasses, sys, tempfile, threading, time, statistics
from pathlib import Path
import torch
from torch.profiler import profile, ProfilerActivity, record_function
from prolific.config import make_config
from prolific.speed_options import best_options
from prolific.bench import common, stage1 as b1, mesh_stages as bm

part = sys.argv[1]
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
model = sys.argv[2] if len(sys.argv) > 2 else ("sd21" if dev.type == "cuda" else "tiny")
args = type("A", (), {"model": model, "model_cache": None, "seed": 0})()
model = common.prepare_model(args, dev)
preset = "standard" if dev.type == "cuda" else "test"
RES = 512 if dev.type == "cuda" else 32


def ranged(obj, name, label):
    fn = getattr(obj, name)
    def wrapper(*a, **k):
        with record_function(label):
            return fn(*a, **k)
    setattr(obj, name, wrapper)


def report(steps, n_warm=4, n_prof=3):
    for i in range(n_warm):
        steps(i)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    walls = []
    for i in range(6):
        t = time.perf_counter(); steps(n_warm + i); sync(); walls.append((time.perf_counter() - t) * 1e3)
    print(f"{part} {RES}px wall per step (synchronised each): median {statistics.median(walls):.1f} ms, all "
          + " ".join(f"{w:.1f}" for w in walls), flush=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(n_prof):
            steps(100 + i)
        sync()
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=70, max_name_column_width=100))
    skey = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=skey, row_limit=50, max_name_column_width=100))


if part == "stage1":
    cfg = make_config(common.PROMPT, preset, {"device": str(dev)})
    v = b1.build_variant(best_options(), False, cfg, model, dev, 0, 1)
    prompt = v.prior.embed_prompt(common.PROMPT, cfg.prior.negative_prompt, cfg.prior.view_dependent_prompt)
    gen = torch.Generator(dev).manual_seed(0)
    ctx = b1.bench_context(cfg, RES, dev, gen, prompt)
    from prolific.stages import nerf as ns
    p = v.particles[0]
    ranged(p, "renderer", "part:render")
    from prolific.render import packed
    for name in ("march_rays", "_prune", "_sigma_dt", "eval_field"):
        ranged(packed, name, f"part:{name}")
    ranged(packed.Encoded, "assemble", "part:assemble")
    for name in ("encode", "pretrained", "both_branches", "loss", "update_estimator"):
        ranged(v.distill, name, f"part:{name}")
    ns.update_occupancy(v.particles, ctx.generators)
    def steps(i):
        with record_function("part:step"):
            ns.train_step(ctx, v.particles, v.optimizers, v.distill, i)
    report(steps)
    v.close()

if part == "stage2":
    from prolific.prior.diffusion import load_prior
    from prolific.prior import speed
    from prolific.prior.vsd import ScoreDistillation
    from prolific.render.raster import make_rasterizer
    from prolific.stages import geometry
    from prolific.stages.context import StageContext
    from prolific.stages.runner import stage_prior
    cfg = make_config(common.PROMPT, preset, {"device": str(dev)})
    opts = best_options()
    prior = load_prior(model, dev, speed.prior_dtype(opts, dev))
    with speed.applied(prior, opts):
        pcfg = stage_prior(cfg.prior, cfg.geometry.anneal_fraction, cfg.geometry.guidance_scale)
        g = ScoreDistillation(prior, pcfg, "sds", **speed.estimator_kwargs(opts))
        d = bm.initial_surface(cfg, dev, 0)
        opt = geometry.make_optimizer(d, cfg.geometry, speed.fused_adam(opts, dev))
        print("faces", int(d.mesh().faces.shape[0]), flush=True)
        raster = make_rasterizer(dev)
        print("rasterizer", raster.name, flush=True)
        prompt = prior.embed_prompt(common.PROMPT, cfg.prior.negative_prompt, cfg.prior.view_dependent_prompt)
        sub = dataclasses.replace(cfg.geometry, resolution=RES)
        ctx = StageContext(cfg=dataclasses.replace(cfg, geometry=sub), device=dev, prior=prior, prompt_emb=prompt,
                           job_dir=Path(tempfile.mkdtemp()), reporter=None, cancel=threading.Event(),
                           generator=torch.Generator(dev).manual_seed(0))
        for name in ("encode", "pretrained", "both_branches", "loss"):
            ranged(g, name, f"part:{name}")
        ranged(geometry, "regularisers", "part:regularisers")
        ranged(geometry, "render_mesh", "part:render")
        ranged(d, "mesh", "part:mesh")
        def steps(i):
            with record_function("part:step"):
                geometry.train_step(ctx, raster, [d], [opt], g, i)
        report(steps)
        g.close()
