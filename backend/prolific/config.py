"""Dataclass configs for every stage, the presets (pure data), and validation with clear errors.

`make_config(preset, overrides)` is the one way a job's settings are built: the CLI, the server and the bench
all go through it, so a bad value gets the same `BadRequest` sentence everywhere.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest

STAGES = ("nerf", "geometry", "texture")
GUIDANCES = ("vsd", "sds")


@dataclass
class PriorConfig:
    model: str | None = None  # HF id or local folder; None = the bundled toy prior
    guidance: str = "vsd"  # "vsd" or "sds" (stage 1 and texture stage)
    guidance_scale: float = 7.5  # CFG scale of the pretrained branch under VSD (paper: 7.5)
    sds_guidance_scale: float = 100.0  # SDS needs large CFG (DreamFusion)
    lora_rank: int = 4
    lora_lr: float = 1e-3
    lora_steps_per_iter: int = 1  # the paper alternates one particle step and one LoRA step
    camera_condition: bool = True
    t_min: float = 0.02
    t_max: float = 0.98
    t_max_annealed: float = 0.50
    anneal_fraction: float = 0.2  # fraction of stage-1 steps run with the wide t range (5000 of 25000)
    negative_prompt: str = ""
    view_dependent_prompt: bool = True
    dtype: str = "auto"  # auto = bf16 on a bf16-capable GPU, fp16 on other GPUs, fp32 on CPU
    speed: str = "auto"  # speed switches as `prolific bench --opt` names them; auto = prior.speed.job_options


@dataclass
class NerfConfig:
    steps: int = 5000
    resolutions: tuple[int, ...] = (64, 512)  # progressive rendering resolution
    resolution_milestones: tuple[int, ...] = (1000,)  # step at which each next resolution starts
    lr: float = 1e-2
    mode: str = "object"  # object: blob lambda=10, r=0.5 ; scene: lambda=-10, r=2.5
    hash_levels: int = 16
    hash_features: int = 2
    hash_log2_size: int = 19
    hash_base_res: int = 16
    hash_max_res: int = 2048
    bound: float = 1.0  # the scene is the cube [-bound, bound]^3
    samples_per_ray: int = 64
    occupancy_res: int = 64
    occupancy_threshold: float = 0.01
    occupancy_every: int = 16
    shading: tuple[float, float, float] = (0.2, 0.4, 0.4)  # probability of albedo / lambertian / textureless
    camera_distance: tuple[float, float] = (1.0, 1.5)  # threestudio prolificdreamer.yaml and the official code
    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    fov_deg: tuple[float, float] = (40.0, 70.0)
    checkpoint_every: int = 1000
    preview_every: int = 100


@dataclass
class GeometryConfig:
    steps: int = 2000
    tet_res: int = 128
    resolution: int = 512
    lr: float = 1e-2
    density_threshold: float = 5.0  # NeRF density level set that becomes the initial surface
    guidance_scale: float = 100.0  # SDS on normal maps
    normal_consistency_weight: float = 1e3
    laplacian_weight: float = 1e3
    # Floaters: parts of the final surface smaller than this fraction of the largest part's area are dropped
    # (0 keeps every part). The toy runs' meshes had 18-77 such parts holding up to a fifth of the faces.
    min_part_fraction: float = 0.05
    checkpoint_every: int = 500
    preview_every: int = 100


@dataclass
class TextureConfig:
    steps: int = 3000
    resolution: int = 512
    lr: float = 1e-2
    guidance: str = "vsd"
    checkpoint_every: int = 500
    preview_every: int = 100


@dataclass
class ExportConfig:
    texture_size: int = 1024
    dilation_px: int = 8
    formats: tuple[str, ...] = ()  # extra formats beside mesh.npz: "glb", "obj"
    turntable_views: int = 8


@dataclass
class JobConfig:
    prompt: str
    preset: str = "standard"
    seed: int = 0
    particles: int = 1
    stages: tuple[str, ...] = STAGES
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    prior: PriorConfig = field(default_factory=PriorConfig)
    nerf: NerfConfig = field(default_factory=NerfConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    texture: TextureConfig = field(default_factory=TextureConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> "JobConfig":
        _validate(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Presets are data: nested overrides applied on top of the dataclass defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "test": {
        "device": "cpu",
        "nerf": {"steps": 6, "resolutions": (16, 24), "resolution_milestones": (3,), "hash_levels": 4,
                 "hash_log2_size": 12, "hash_max_res": 64, "samples_per_ray": 16, "occupancy_res": 16,
                 "occupancy_every": 2, "checkpoint_every": 3, "preview_every": 2},
        "geometry": {"steps": 3, "tet_res": 16, "resolution": 32, "checkpoint_every": 2, "preview_every": 2},
        "texture": {"steps": 3, "resolution": 32, "checkpoint_every": 2, "preview_every": 2},
        "export": {"texture_size": 64, "dilation_px": 2, "turntable_views": 8},
        "prior": {"lora_rank": 2},
    },
    # README's main command: the bundled toy prior (64 px, pixel space) on a CPU in a few minutes.
    "demo": {
        "prior": {"guidance_scale": 5.0},
        "nerf": {"steps": 200, "resolutions": (32, 64), "resolution_milestones": (80,), "hash_levels": 8,
                 "hash_log2_size": 15, "hash_max_res": 256, "samples_per_ray": 32, "occupancy_res": 32,
                 "occupancy_every": 8, "shading": (0.7, 0.3, 0.0), "checkpoint_every": 50, "preview_every": 20},
        # The toy prior never saw normal maps, so normal-map SDS from it only roughens the surface extracted from
        # the NeRF (area/volume^(2/3) 14.5 -> 24 in 30 steps, measured): the demo keeps the extracted surface.
        "geometry": {"steps": 0, "tet_res": 48, "resolution": 64},
        "texture": {"steps": 60, "resolution": 64, "checkpoint_every": 30, "preview_every": 10},
        "export": {"texture_size": 256},
    },
    "draft": {
        "nerf": {"steps": 1500, "resolutions": (64, 256), "resolution_milestones": (500,),
                 "checkpoint_every": 500, "preview_every": 50},
        "geometry": {"steps": 400, "tet_res": 96, "resolution": 256},
        "texture": {"steps": 600, "resolution": 256},
        "export": {"texture_size": 512},
    },
    "standard": {},
    "high": {
        "nerf": {"steps": 10000, "resolution_milestones": (2000,)},
        "geometry": {"steps": 5000},
        "texture": {"steps": 10000},
        "export": {"texture_size": 2048},
    },
    # The paper's settings (threestudio's ProlificDreamer configs): 25k NeRF steps at 64 then 512 from 5k,
    # 15k geometry steps, 30k texture steps, 512 renders, wide t range for the first 5k steps.
    "paper": {
        "nerf": {"steps": 25000, "resolution_milestones": (5000,), "checkpoint_every": 2500},
        "geometry": {"steps": 15000},
        "texture": {"steps": 30000},
        "export": {"texture_size": 2048},
    },
}

_SECTIONS = {"prior": PriorConfig, "nerf": NerfConfig, "geometry": GeometryConfig, "texture": TextureConfig,
             "export": ExportConfig}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build_section(cls, values: dict[str, Any], section: str):
    return cls(**_typed_values(cls, values, section))


def _typed_values(cls, values: dict[str, Any], section: str = "", exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """`values` converted to the annotated types of `cls`'s fields, or BadRequest naming the setting
    (`section.key`), the type wanted and an example, so the CLI's --set and the server check alike."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in exclude}
    out = {}
    for key, value in values.items():
        name = f"{section}.{key}" if section else key
        if key not in fields:
            raise BadRequest(f"Unknown setting '{name}'. Known: {', '.join(sorted(fields))}.")
        ok, out[key] = _convert(value, hints[key])
        if not ok:
            default = _default(fields[key])
            plain = default is None or isinstance(default, bool) or default == ()  # an example would not help
            example = "" if plain else f" such as {json.dumps(default)}"
            raise BadRequest(f"{name} must be {_describe(hints[key])}{example} (got {value!r}).")
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return None if f.default_factory is dataclasses.MISSING else f.default_factory()


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """(True, value as the type `hint`) when it is one (an int is a float, a list a tuple), else (False, value).
    Knows the annotations config fields use; another is a programming error (test_config checks every field)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if hint is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _convert(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            return False, value
        converted = [_convert(v, a) for v, a in zip(value, items)]
        return all(ok for ok, _ in converted), tuple(v for _, v in converted)
    raise TypeError(f"config.py cannot check values of type {hint}")


_NAMES = {bool: ("true or false", "true/false values"), int: ("a whole number", "whole numbers"),
          float: ("a number", "numbers"), str: ("text", "texts"), type(None): ("null", "nulls")}


def _describe(hint: Any, plural: bool = False) -> str:
    """How a value of type `hint` is named in an error message: "a number", "a list of 2 numbers", ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _NAMES:
        return _NAMES[hint][plural]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_describe(args[0], True)}"
    if len(set(args)) == 1:
        return f"a list of {len(args)} {_describe(args[0], True)}"
    return "a list of " + ", ".join(_describe(a) for a in args)


def make_config(prompt: str, preset: str = "standard", overrides: dict[str, Any] | None = None) -> JobConfig:
    """Build and validate a job config from a preset plus nested overrides such as {"nerf": {"steps": 10}}."""
    if preset not in PRESETS:
        raise BadRequest(f"Unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}.")
    values = _merge(PRESETS[preset], overrides or {})
    top = {k: v for k, v in values.items() if k not in _SECTIONS}
    kwargs: dict[str, Any] = {"prompt": prompt, "preset": preset,
                              **_typed_values(JobConfig, top, exclude=("prompt", "preset"))}
    for key, cls in _SECTIONS.items():
        if key in values:
            if not isinstance(values[key], dict):
                raise BadRequest(f"Setting '{key}' must be a mapping of its fields.")
            kwargs[key] = _build_section(cls, values[key], key)
    return JobConfig(**kwargs).validate()


def default_preset(device_type: str, bundled_prior: bool) -> str:
    """The preset of a job that names none: demo for the bundled toy prior (made for it: minutes on a CPU);
    for a real model standard on a GPU and draft on a CPU (the cheapest preset made for one, still hours)."""
    if bundled_prior:
        return "demo"
    return "draft" if device_type == "cpu" else "standard"


def check_job_name(job_name: Any) -> str:
    """`job_name` when it is a plain folder name (no path separators, no drive colon, at most 200 characters)."""
    if (not isinstance(job_name, str) or not job_name.strip() or job_name in (".", "..") or len(job_name) > 200
            or any(c in job_name for c in '/\\:')):
        raise BadRequest(f"The job name '{job_name}' must be a plain folder name inside the output folder "
                         "(no path separators).")
    return job_name


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise BadRequest(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(cfg: JobConfig) -> None:
    _require(isinstance(cfg.prompt, str) and cfg.prompt.strip() != "", "The prompt is empty: type what to make.")
    _require(len(cfg.prompt) <= 1000, "The prompt is longer than 1000 characters.")
    _require(_is_int(cfg.seed) and 0 <= cfg.seed < 2**32, "The seed must be a whole number from 0 to 4294967295.")
    _require(_is_int(cfg.particles) and 1 <= cfg.particles <= 16, "Particles (variations) must be 1 to 16.")
    _require(len(cfg.stages) > 0 and all(s in STAGES for s in cfg.stages),
             f"Stages must be a non-empty list of: {', '.join(STAGES)}.")
    _require(list(cfg.stages) == [s for s in STAGES if s in cfg.stages],
             "Stages must come in the order nerf, geometry, texture.")
    _require(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
             f"Unknown device '{cfg.device}': use auto, cpu or cuda[:N].")
    p = cfg.prior
    _require(p.guidance in GUIDANCES, f"Unknown guidance '{p.guidance}': use vsd or sds.")
    _require(cfg.texture.guidance in GUIDANCES, f"Unknown texture guidance '{cfg.texture.guidance}'.")
    _require(p.guidance_scale >= 0 and p.sds_guidance_scale >= 0, "Guidance scales must not be negative.")
    _require(_is_int(p.lora_rank) and p.lora_rank >= 1, "The LoRA rank must be a positive whole number.")
    _require(p.lora_lr > 0, "The LoRA learning rate must be positive.")
    _require(_is_int(p.lora_steps_per_iter) and p.lora_steps_per_iter >= 1,
             "prior.lora_steps_per_iter must be a whole number >= 1.")
    _require(0.0 <= p.t_min < p.t_max_annealed <= p.t_max <= 1.0,
             "The time range needs 0 <= t_min < t_max_annealed <= t_max <= 1.")
    _require(0.0 <= p.anneal_fraction <= 1.0, "anneal_fraction must lie in [0, 1].")
    _require(p.dtype in ("auto", "fp32", "fp16", "bf16"), f"Unknown dtype '{p.dtype}': use auto, fp32, fp16 or bf16.")
    _require(isinstance(p.speed, str), "prior.speed must be text such as auto, none or sdpa,batch.")
    if p.speed != "auto":
        from .prior.speed import SpeedOptions  # torch-free until someone sets it

        SpeedOptions.parse(p.speed)  # BadRequest naming the unknown switch
    n = cfg.nerf
    for name, section in (("nerf", n), ("geometry", cfg.geometry), ("texture", cfg.texture)):
        _require(_is_int(section.steps) and section.steps >= 0,
                 f"{name}.steps must be a whole number >= 0 (got {section.steps!r}).")
        _require(section.lr > 0, f"{name}.lr must be positive.")
        _require(section.checkpoint_every >= 1 and section.preview_every >= 1,
                 f"{name}: checkpoint_every and preview_every must be >= 1.")
    _require(len(n.resolutions) == len(n.resolution_milestones) + 1,
             "nerf.resolutions needs exactly one more entry than nerf.resolution_milestones.")
    _require(all(8 <= r <= 2048 for r in n.resolutions), "Rendering resolutions must lie in 8..2048.")
    _require(list(n.resolution_milestones) == sorted(n.resolution_milestones), "Milestones must increase.")
    _require(n.mode in ("object", "scene"), f"Unknown nerf.mode '{n.mode}': use object or scene.")
    _require(n.samples_per_ray >= 4, "nerf.samples_per_ray must be >= 4.")
    _require(len(n.shading) == 3 and abs(sum(n.shading) - 1.0) < 1e-6 and min(n.shading) >= 0,
             "nerf.shading must be three probabilities (albedo, lambertian, textureless) that sum to 1.")
    _require(4 <= cfg.geometry.tet_res <= 512, "geometry.tet_res must lie in 4..512.")
    _require(0.0 <= cfg.geometry.min_part_fraction <= 1.0, "geometry.min_part_fraction must lie in [0, 1].")
    _require(8 <= cfg.geometry.resolution <= 2048 and 8 <= cfg.texture.resolution <= 2048,
             "Stage resolutions must lie in 8..2048.")
    e = cfg.export
    _require(16 <= e.texture_size <= 8192, "export.texture_size must lie in 16..8192.")
    _require(all(f in ("glb", "obj") for f in e.formats), "export.formats may hold glb and obj.")
    _require(e.turntable_views >= 1, "export.turntable_views must be >= 1.")
