"""`prolific bench stage2|stage3`: the geometry step (DMTet, normal-map SDS) and the texture step (albedo field,
VSD) on rasterised renders, timed per part, per resolution and per speed variant.

Both run the stages' own steps (stages/geometry.train_step, stages/texture.train_step) in the runner's step loop
on a surface extracted from a freshly initialised NeRF (its density blob), with a reporter that turns each loop
iteration into one timed step. The loop's final iteration also writes a preview, so it is left out.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import threading
import time
from pathlib import Path

import torch

from ..config import make_config
from ..prior import speed
from ..prior.speed import SpeedOptions, log
from . import common
from .flops import vsd_step_flops
from .timing import PartTimer, patched

NEVER = 10**9
GPU_RESOLUTIONS = "512"


class BenchReporter:
    """The two Reporter methods a stage loop calls, each loop iteration becoming one timed step."""

    def __init__(self, timer: PartTimer):
        self.timer = timer

    def check_cancel(self) -> None:
        self.timer.begin()

    def step(self, stage: str, step: int, total: int, preview=None) -> None:
        self.timer.end()


def build_parser(stage: str) -> argparse.ArgumentParser:
    what = "geometry (normal-map SDS on a DMTet)" if stage == "stage2" else "texture (VSD on an albedo field)"
    parser = argparse.ArgumentParser(prog=f"prolific bench {stage}", description=f"Time the {what} step.")
    common.add_common_args(parser, resolutions=GPU_RESOLUTIONS)
    return parser


def initial_surface(cfg, device: torch.device, seed: int):
    """The stage-2 starting DMTet of a fresh NeRF (its density blob, cut at geometry.density_threshold)."""
    from ..field.dmtet import TetGrid
    from ..field.nerf import NeRF
    from ..stages.geometry import initial_dmtet

    torch.manual_seed(seed)
    nerf = NeRF(cfg.nerf, cfg.hash_grid, device=device)
    grid = TetGrid.build(cfg.geometry.tet_res, cfg.nerf.bound, device)
    with torch.no_grad():
        return initial_dmtet(grid, nerf, cfg.geometry)


def run_variant(stage: str, name: str, options: SpeedOptions, reference: bool, args, cfg, model: str,
                device: torch.device, resolutions: list[int]) -> dict:
    from ..prior.diffusion import load_prior

    out: dict = {"name": name, "reference": reference, "options": options.to_dict(), "resolutions": {},
                 "errors": {}}
    log(f"bench {stage} [{name}]: loading the model")
    common.free_memory(device)
    start = time.perf_counter()
    prior = load_prior(model, device, speed.prior_dtype(options, device))
    out["load_s"] = round(time.perf_counter() - start, 2)
    try:
        with speed.applied(prior, options) as applied:
            out["applied"] = dict(applied)
            measure(stage, name, options, reference, args, cfg, prior, device, resolutions, out)
    finally:
        del prior
        common.free_memory(device)
    return out


def measure(stage: str, name: str, options: SpeedOptions, reference: bool, args, cfg, prior, device: torch.device,
            resolutions: list[int], out: dict) -> None:
    """The variant's estimator and particles on the loaded `prior`, timed at each resolution into `out`."""
    from ..prior.vsd import ScoreDistillation
    from ..render.raster import make_rasterizer
    from ..stages import geometry, texture
    from ..stages.context import StageContext
    from ..stages.runner import run_steps, stage_prior

    if stage == "stage2":
        prior_cfg = stage_prior(cfg.prior, cfg.geometry.anneal_fraction, cfg.geometry.guidance_scale)
        guidance_name = "sds"
    else:
        prior_cfg = stage_prior(cfg.prior, cfg.texture.anneal_fraction)
        guidance_name = cfg.texture.guidance
    vsd = guidance_name == "vsd"
    torch.manual_seed(args.seed)
    guidance = ScoreDistillation(prior, prior_cfg, guidance_name, separate_estimator=reference and vsd,
                                 **speed.estimator_kwargs(options))
    if guidance.batched:
        out["applied"]["batch"] = "cfg+lora in one call"
    if options.overlap and vsd:
        out["applied"]["overlap"] = guidance.updates.name
    if options.lora_kernels and vsd:
        out["applied"]["lora_kernels"] = "triton" if guidance.lora_kernels else "skipped: needs CUDA and triton"
    dmtets = [initial_surface(cfg, device, args.seed + k) for k in range(args.particles)]
    fused = speed.fused_adam(options, device)
    if stage == "stage2":
        optimizers = [geometry.make_optimizer(d, cfg.geometry, fused) for d in dmtets]
    else:
        from ..field.texture import AlbedoField

        with torch.no_grad():
            meshes = [d.mesh().detach() for d in dmtets]
        fields = [AlbedoField(cfg.hash_grid, cfg.nerf.bound, device) for _ in meshes]
        backgrounds = texture.stage_backgrounds(cfg.texture, [None] * len(fields))
        optimizers = [texture.make_optimizer(f, b, cfg.texture, fused) for f, b in zip(fields, backgrounds)]
    if options.fused_adam:
        out["applied"]["fused_adam"] = "on" if fused else "skipped: needs CUDA"
    scale = prior_cfg.guidance_scale if vsd else prior_cfg.sds_guidance_scale
    out["flops"] = vsd_step_flops(prior, args.particles, guidance_name, scale)
    out["faces"] = [int(d.mesh().faces.shape[0]) for d in dmtets]
    prompt = prior.embed_prompt(common.PROMPT, cfg.prior.negative_prompt, cfg.prior.view_dependent_prompt)
    timer = PartTimer(device)
    module = geometry if stage == "stage2" else texture
    raster = make_rasterizer(device)
    out["rasterizer"] = raster.name  # nvdiffrast or the PyTorch fallback: the stage's cost depends on it
    if stage == "stage3":
        normals = [m.vertex_normals() for m in meshes]
    patches = [timer.wrap(module, "render_mesh", "render"),
               timer.wrap(guidance, "encode", "encode"),
               timer.wrap(guidance, "pretrained", "prior"),
               timer.wrap(guidance, "both_branches", "prior"),
               timer.wrap(guidance, "loss", "loss", after="backward")]
    if stage == "stage2":
        patches += [timer.wrap(geometry, "regularisers", "regularisers")]
        patches += [timer.wrap(d, "mesh", "mesh") for d in dmtets]
    else:
        patches += [timer.wrap(guidance, "eps_phi", "estimator"),
                    timer.wrap(guidance, "update_estimator", "lora_update"),
                    timer.wrap_update(guidance.updates)]
    patches += [timer.wrap(opt, "step", "optimizer", after="other") for opt in optimizers]
    section = "geometry" if stage == "stage2" else "texture"
    try:
        with patched(patches), tempfile.TemporaryDirectory(prefix="prolific-bench-") as job_dir:
            for res in resolutions:
                steps = args.warmup + args.steps + 1
                sub = dataclasses.replace(getattr(cfg, section), resolution=res, steps=steps,
                                          checkpoint_every=NEVER, preview_every=NEVER)
                ctx = StageContext(cfg=dataclasses.replace(cfg, **{section: sub}), device=device, prior=prior,
                                   prompt_emb=prompt, job_dir=Path(job_dir), reporter=BenchReporter(timer),
                                   cancel=threading.Event(), generator=torch.Generator(device).manual_seed(args.seed))

                def loop():
                    timer.reset()
                    if stage == "stage2":
                        def step_fn(i):
                            return geometry.train_step(ctx, raster, dmtets, optimizers, guidance, i)
                    else:
                        def step_fn(i):
                            return texture.train_step(ctx, raster, meshes, normals, fields, optimizers, backgrounds,
                                                      guidance, i)
                    run_steps(ctx, section, sub, 0, step_fn, lambda done: None)

                out["resolutions"][str(res)] = run_resolution(stage, name, res, loop, timer, guidance, args, device,
                                                              out)
    finally:
        guidance.close()




def run_resolution(stage, name, res, loop, timer, guidance, args, device, out) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log(f"bench {stage} [{name}] {res}px: {args.warmup} warm-up + {args.steps} timed step(s)")
    result: dict = {}
    captured_before = common.capture_seconds(guidance)
    start = time.perf_counter()
    try:
        loop()
    except Exception as err:  # noqa: BLE001
        timer.reset()
        return common.record_failure(result, err, device)
    result["wall_s"] = round(time.perf_counter() - start, 2)
    timer.drop_last()  # the last iteration also saved a preview
    result.update(timer.summary(skip=args.warmup))
    result.update(common.graphs_block(guidance, captured_before))
    ms = result.get("ms_per_step")
    if ms:
        result["achieved_tflops"] = round(out["flops"]["tflop_per_step"] / (ms / 1e3), 2)
        log(f"bench {stage} [{name}] {res}px: {ms:.1f} ms/step " + " ".join(
            f"{k}={v:.1f}" for k, v in result["breakdown_ms"].items())
            + (f" (update on its stream {result['update_ms']:.1f})" if "update_ms" in result else ""))
    result.update(common.memory_block(device))
    return result



def run(stage: str, argv: list[str]) -> dict:
    args = build_parser(stage).parse_args(argv)
    device = common.resolve_device(args.device)
    preset = args.preset or ("standard" if device.type == "cuda" else "test")
    overrides: dict = {"device": str(device), "particles": args.particles}
    if args.guidance and stage == "stage3":
        overrides["texture"] = {"guidance": args.guidance}
    cfg = make_config(common.PROMPT, preset, overrides)
    own = cfg.geometry.resolution if stage == "stage2" else cfg.texture.resolution
    resolutions = common.parse_resolutions(args.resolutions, device, GPU_RESOLUTIONS, (own,))
    runs = common.variants(args, device)
    model = common.prepare_model(args, device)
    result = {"bench": stage, **common.environment(device), "model": args.model, "preset": preset,
              "particles": args.particles, "steps": args.steps, "warmup": args.warmup, "variants": []}
    if stage == "stage2":
        result["tet_res"] = cfg.geometry.tet_res
    common.run_variants(result, runs, args, device, lambda name, options, reference: run_variant(
        stage, name, options, reference, args, cfg, model, device, resolutions))
    common.emit(result, args.json)
    return result
