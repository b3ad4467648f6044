"""`prolific bench stage1`: the real stage-1 VSD step (stages/nerf.train_step: render → encode → pretrained
CFG → ε_φ → particle update → LoRA update), timed per part, per render resolution and per speed variant.

Each variant loads the model afresh (its own dtype), so the reference and the optimised runs share nothing but
the process; the reference keeps a second UNet for the LoRA branch as the reference implementations do.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import time
from types import SimpleNamespace

import torch

from ..config import make_config
from ..errors import BadRequest
from ..prior import speed
from ..prior.speed import SpeedOptions, log
from . import common
from .flops import vsd_step_flops
from .profiling import PROFILED_STEPS, profile_steps
from .timing import PartTimer, patched


GPU_RESOLUTIONS = "64,512"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prolific bench stage1", description=__doc__.split("\n\n")[0])
    common.add_common_args(parser, resolutions=GPU_RESOLUTIONS)
    parser.add_argument("--gpus", default=None, metavar="K,K,...",
                        help="time whole jobs with the particles spread over each of these process counts (one GPU "
                             "each; processes on a CPU) instead of the speed variants: ms per iteration of all "
                             "particles (bench/team.py)")
    parser.add_argument("--field", choices=sorted(common.FIELDS), default="blob",
                        help="the NeRF's density at the first step: blob (stage 1's initialisation, the default) or "
                             "solid (an opaque ball, as a trained object when 512 px rendering starts)")
    parser.add_argument("--profile", action="store_true",
                        help=f"after the timed steps, {PROFILED_STEPS} more under torch.profiler (CUDA): the GPU's "
                             "busy time against the wall, per stream, per kernel kind, the longest kernels (JSON "
                             "'profile' of each resolution)")
    return parser


def make_particles(cfg, grid, device: torch.device, n: int, reference: bool = False,
                   reference_occupancy: bool = False, field: str = "blob") -> list:
    """Stage 1's own particles with the config's renderer and hash grid (`prolific bench render` compares
    renderers), their density the --field's. The reference uses the PyTorch hash grid and, unless
    `reference_occupancy`, skips no empty space, as the reference implementations' dense renderers."""
    from ..stages import nerf as nerf_stage

    if reference:
        grid = dataclasses.replace(grid, impl="torch")
    particles = [nerf_stage.make_particle(cfg, grid, device) for _ in range(n)]
    for p in particles:
        common.set_field(p.nerf, field)
    if reference and not reference_occupancy:
        for p in particles:
            p.occupancy = None
    return particles


def particle_parameters(particle) -> list:
    return list(particle.nerf.parameters()) + list(particle.background.parameters())


def hash_impl(particles) -> str:
    return getattr(particles[0].nerf.encoding, "impl", type(particles[0].nerf.encoding).__name__)


@dataclasses.dataclass
class Variant:
    """A loaded prior, its estimator and the particles, with one set of speed options applied (held by
    `settings` until `close`)."""

    prior: object
    distill: object
    particles: list
    optimizers: list  # one per particle
    options: SpeedOptions
    applied: dict
    settings: contextlib.ExitStack

    def close(self) -> None:
        self.distill.close()
        self.settings.close()


def build_variant(options: SpeedOptions, reference: bool, cfg, model: str, device: torch.device, seed: int,
                  n_particles: int, reference_occupancy: bool = False, field: str = "blob") -> Variant:
    """Load the model in the variant's dtype, apply the options' settings, build the estimator as they say (on
    a separate UNet copy for the reference) and the particles. Seeds make two variants start from the same
    weights."""
    from ..prior.diffusion import load_prior
    from ..prior.vsd import ScoreDistillation
    from ..stages import nerf as nerf_stage

    prior = load_prior(model, device, speed.prior_dtype(options, device))
    settings = contextlib.ExitStack()
    applied = dict(settings.enter_context(speed.applied(prior, options)))
    torch.manual_seed(seed)
    try:
        distill = ScoreDistillation(prior, cfg.prior, cfg.prior.guidance, separate_estimator=reference,
                                    **speed.estimator_kwargs(options))
    except BaseException:
        settings.close()  # the process-wide flags go back even when the variant cannot be built
        raise
    if distill.batched:
        applied["batch"] = "cfg+lora in one call"
    if options.overlap:
        applied["overlap"] = distill.updates.name
    if options.lora_kernels:
        applied["lora_kernels"] = "triton" if distill.lora_kernels else "skipped: needs CUDA and triton"
    torch.manual_seed(seed + 1)
    particles = make_particles(cfg.nerf, cfg.hash_grid, device, n_particles, reference, reference_occupancy, field)
    fused = speed.fused_adam(options, device)
    optimizers = [nerf_stage.make_optimizer(cfg.nerf, p.nerf, p.background, fused) for p in particles]
    if options.fused_adam:
        applied["fused_adam"] = "on" if fused else "skipped: needs CUDA"
    return Variant(prior, distill, particles, optimizers, options, applied, settings)


def bench_context(cfg, res: int, device: torch.device, generator: torch.Generator, prompt) -> SimpleNamespace:
    """What stages/nerf.train_step reads from its StageContext, with the resolution pinned to `res`."""
    from ..stages.distributed import Team
    from ..stages.randomness import particle_generators

    ncfg = dataclasses.replace(cfg.nerf, resolutions=(res,), resolution_milestones=(), steps=10**6)
    return SimpleNamespace(cfg=dataclasses.replace(cfg, nerf=ncfg), device=device, generator=generator,
                           generators=particle_generators(generator.initial_seed(), range(cfg.particles), device),
                           team=Team(), prompt_emb=prompt)


def run_variant(name: str, options: SpeedOptions, reference: bool, args, cfg, model: str,
                device: torch.device, resolutions: list[int], flop_cache: dict) -> dict:
    out: dict = {"name": name, "reference": reference, "options": options.to_dict(), "resolutions": {}}
    log(f"bench stage1 [{name}]: loading the model")
    common.free_memory(device)
    start = time.perf_counter()
    variant = build_variant(options, reference, cfg, model, device, args.seed, args.particles,
                            args.reference_occupancy, args.field)
    prior, distill, particles = variant.prior, variant.distill, variant.particles
    try:
        out["load_s"] = round(time.perf_counter() - start, 2)
        out["applied"], out["errors"] = variant.applied, {}
        out["hash_grid"] = hash_impl(particles)
        out["renderer"] = particles[0].renderer.name
        key = (str(dict(prior.unet.config)), args.particles, cfg.prior.guidance)
        if key not in flop_cache:
            scale = cfg.prior.guidance_scale if cfg.prior.guidance == "vsd" else cfg.prior.sds_guidance_scale
            flop_cache[key] = vsd_step_flops(prior, args.particles, cfg.prior.guidance, scale)
        out["flops"] = flop_cache[key]
        prompt = prior.embed_prompt(common.PROMPT, cfg.prior.negative_prompt, cfg.prior.view_dependent_prompt)
        generator = torch.Generator(device).manual_seed(args.seed)

        timer = PartTimer(device)
        patches = [timer.wrap(p, "renderer", "render") for p in particles]
        patches += [timer.wrap(distill, "encode", "encode"),
                   timer.wrap(distill, "pretrained", "prior"),
                   timer.wrap(distill, "both_branches", "prior"),
                   timer.wrap(distill, "eps_phi", "estimator"),
                   timer.wrap(distill, "loss", "loss", after="backward"),
                   timer.wrap(distill, "update_estimator", "lora_update"),
                   timer.wrap_update(distill.updates)]
        patches += [timer.wrap(opt, "step", "optimizer", after="other") for opt in variant.optimizers]
        with patched(patches):
            for res in resolutions:
                out["resolutions"][str(res)] = run_resolution(
                    name, res, cfg, distill, particles, variant.optimizers, prompt, generator, timer, args, device,
                    out)
    finally:
        variant.close()
        del variant, prior, distill, particles
        common.free_memory(device)
    return out


def run_resolution(name, res, cfg, distill, particles, optimizers, prompt, generator, timer, args, device,
                   out) -> dict:
    from ..stages import nerf as nerf_stage

    ctx = bench_context(cfg, res, device, generator, prompt)
    ncfg = ctx.cfg.nerf
    losses: list[float] = []
    step_index = [0]

    def one_step():
        i = step_index[0]
        step_index[0] += 1
        with timer.step():
            if i % ncfg.occupancy_every == 0 and particles[0].occupancy is not None:
                timer.push("occupancy")
                nerf_stage.update_occupancy(particles, ctx.generators)
                timer.pop()
            rgb = nerf_stage.train_step(ctx, particles, optimizers, distill, i)
        losses.append(rgb.float().mean())  # read after the timed steps: no wait for the GPU inside them

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer.reset()
    result: dict = {}
    captured_before = common.capture_seconds(distill)
    log(f"bench stage1 [{name}] {res}px: {args.warmup} warm-up step(s)")
    start = time.perf_counter()
    try:
        for _ in range(args.warmup):
            one_step()
    except Exception as err:  # noqa: BLE001
        return common.record_failure(result, err, device)
    result["warmup_s"] = round(time.perf_counter() - start, 2)
    log(f"bench stage1 [{name}] {res}px: {args.steps} timed step(s)")
    try:
        for _ in range(args.steps):
            one_step()
    except Exception as err:  # noqa: BLE001
        return common.record_failure(result, err, device)
    result.update(timer.summary(skip=args.warmup))
    result.update(common.graphs_block(distill, captured_before))
    ms = result.get("ms_per_step")
    if ms:
        result["achieved_tflops"] = round(out["flops"]["tflop_per_step"] / (ms / 1e3), 2)
    result.update(common.memory_block(device))
    result["render_finite"] = all(math.isfinite(float(v)) for v in losses)
    if particles[0].occupancy is not None:
        result["occupied_fraction"] = round(particles[0].occupancy.occupied_fraction, 4)
    log(f"bench stage1 [{name}] {res}px: {ms:.1f} ms/step " + " ".join(
        f"{k}={v:.1f}" for k, v in result["breakdown_ms"].items())
        + (f" (update on its stream {result['update_ms']:.1f})" if "update_ms" in result else ""))
    if args.profile:
        try:
            result["profile"] = profile_steps(one_step, device)
        except Exception as err:  # noqa: BLE001 - the timings above stand without it
            result["profile"] = {"error": common.error_text(err)}
        profiled = result["profile"]
        if "gpu_busy_ms" in profiled:
            streams = ", ".join(f"stream {s} {v['kernel_ms']:.1f} ({v['alone_ms']:.1f} alone)"
                                for s, v in profiled["streams"].items())
            log(f"bench stage1 [{name}] {res}px profiled: wall {profiled['wall_ms']:.1f} ms/step, GPU busy "
                f"{profiled['gpu_busy_ms']:.1f}, {streams}")
    return result



def run(argv: list[str]) -> dict:
    args = build_parser().parse_args(argv)
    device = common.resolve_device(args.device)
    preset = args.preset or ("standard" if device.type == "cuda" else "test")
    overrides: dict = {"device": str(device), "particles": args.particles}
    if args.guidance:
        overrides["prior"] = {"guidance": args.guidance}
    cfg = make_config(common.PROMPT, preset, overrides)
    resolutions = common.parse_resolutions(args.resolutions, device, GPU_RESOLUTIONS, cfg.nerf.resolutions)
    if args.gpus is not None:
        from . import team

        if args.field != "blob":
            raise BadRequest("--field is for the speed variants; --gpus times whole jobs from stage 1's start.")
        if args.profile:
            raise BadRequest("--profile is for the speed variants; --gpus times whole jobs over several processes.")
        result = team.run(args, device, preset, resolutions)
        common.emit(result, args.json)
        return result
    runs = common.variants(args, device)
    model = common.prepare_model(args, device)
    result = {"bench": "stage1", **common.environment(device), "model": args.model, "preset": preset,
              "field": args.field, "particles": args.particles, "guidance": cfg.prior.guidance,
              "steps": args.steps, "warmup": args.warmup, "variants": []}
    flop_cache: dict = {}
    common.run_variants(result, runs, args, device, lambda name, options, reference: run_variant(
        name, options, reference, args, cfg, model, device, resolutions, flop_cache))
    common.emit(result, args.json)
    return result
