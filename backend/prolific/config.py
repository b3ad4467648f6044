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
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import BadRequest
from .speed_options import SpeedOptions, already_told

STAGES = ("nerf", "geometry", "texture")
GUIDANCES = ("vsd", "sds")
RENDERERS = ("auto", "packed", "dense")
HASHGRIDS = ("auto", "torch", "triton", "tcnn")
MLP_PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class PriorConfig:
    model: str | None = None  # HF id or local folder; None = the bundled toy prior
    guidance: str = "vsd"  # "vsd" or "sds" (stage 1 and texture stage)
    guidance_scale: float = 7.5  # CFG scale of the pretrained branch under VSD (paper: 7.5)
    sds_guidance_scale: float = 100.0  # SDS needs large CFG (DreamFusion)
    lora_rank: int = 4
    lora_lr: float = 1e-4  # threestudio prolificdreamer.yaml (guidance lr) and the official --unet_lr
    lora_steps_per_iter: int = 1  # the paper alternates one particle step and one LoRA step
    # The LoRA's own training: t ~ U[0, 1000) and the camera zeroed for 10% of its steps, as both references
    # (threestudio train_lora with lora_cfg_training, the official train_one_epoch with --uncond_p 0.1).
    lora_t_min: float = 0.0
    lora_t_max: float = 1.0
    camera_dropout: float = 0.1
    # Both references give ε_φ the bare prompt; only the pretrained branch sees the view suffix.
    lora_view_prompt: bool = False
    camera_condition: bool = True
    t_min: float = 0.02
    t_max: float = 0.98
    t_max_annealed: float = 0.50
    anneal_fraction: float = 0.2  # fraction of stage-1 steps run with the wide t range (5000 of 25000)
    negative_prompt: str = ""
    view_dependent_prompt: bool = True
    # View sectors of the prompt suffix: front within ±30° of azimuth 0, back within ±30° of 180, overhead above
    # 60° elevation (threestudio prolificdreamer.yaml front/back_threshold 30; the official --angle_front 60 is
    # the full width of the front sector, so also ±30°, and --angle_overhead 30 from the pole is also 60°).
    front_half_width_deg: float = 30.0
    back_half_width_deg: float = 30.0
    overhead_elevation_deg: float = 60.0
    # auto = fp16 on a GPU (threestudio's half_precision_weights; the official fp32 costs twice the memory, and
    # bf16 rounds 8x coarser, which the geometry stage's CFG scale of 100 amplifies), fp32 on the CPU
    dtype: str = "auto"
    speed: str = "auto"  # speed switches as `prolific bench --opt` names them; auto = prior.speed.job_options


@dataclass
class NerfConfig:
    steps: int = 5000
    resolutions: tuple[int, ...] = (64, 512)  # progressive rendering resolution
    resolution_milestones: tuple[int, ...] = (1000,)  # step at which each next resolution starts
    lr: float = 1e-2  # the hash table (threestudio geometry.encoding, the official encoders at 10 x --lr)
    mlp_lr: float = 1e-3  # density/colour MLP: threestudio density/feature_network, the official sigma_nets
    background_lr: float = 1e-3  # threestudio background, the official bg_nets
    mode: str = "object"  # object: blob lambda=10, r=0.5 ; scene: lambda=-10, r=2.5
    bound: float = 1.0  # the scene is the cube [-bound, bound]^3
    samples_per_ray: int = 64
    occupancy_res: int = 64
    # A cell is occupied while σ·Δt at the march step (≈ a sample's alpha) may exceed this: threestudio's
    # occ_eval_fn (density × render_step_size) against nerfacc's occ_thre 0.01 (the dense renderer, with no
    # fixed step, tests σ itself). The cells it frees hold only samples that alpha_threshold 0.01 drops anyway,
    # so renders keep their samples and the density pass skips them (the standard blob at 512 px: 145-200
    # marched samples per pixel tested on σ alone, 75-145 on σ·Δt, the same kept; a CPU count).
    occupancy_threshold: float = 0.01
    occupancy_every: int = 16
    # Probability of albedo / lambertian / textureless renders: unlit albedo only, as threestudio
    # (material "no-material") and the official code (--albedo, the default); ε_φ gets no shading label.
    shading: tuple[float, float, float] = (1.0, 0.0, 0.0)
    # Probability that a step's renders get a random solid background instead of the learned one: threestudio's
    # random_aug_prob 0.5, from the first step (the official code waits for step 2000).
    random_background: float = 0.5
    # Regularisers of the renders' opacity: threestudio prolificdreamer.yaml lambda_sparsity 10 (mean of
    # sqrt(opacity² + 0.01)) and lambda_opaque [10000, 0, 1000, 10001]: a BCE of opacity with itself, off
    # before step 10k of 25k, then 1000.
    sparsity_weight: float = 10.0
    opacity_weight: float = 1000.0
    opacity_start_fraction: float = 0.4
    # The official code's alternative to the two above (--lambda_entropy 10: binary entropy of each sample's
    # compositing weight); 0 because the paper preset follows threestudio, which does not use it.
    entropy_weight: float = 0.0
    checkpoint_every: int = 1000
    preview_every: int = 100
    # The fast path, resolved when a particle is built: packed = fixed steps through the occupancy grid, only
    # occupied samples evaluated (render/packed.py); dense = samples_per_ray spread over each ray's occupied
    # stretch (render/volume.py); auto = packed.
    renderer: str = "auto"
    # Packed marching as threestudio's occupancy-grid renderer (nerfacc): march_steps steps over the cube's
    # diagonal (num_samples_per_ray 512), then a density pass without gradients drops the samples where a ray's
    # transmittance is below early_stop (early_stop_eps 1e-4; the official code's T_thresh too) or whose alpha
    # is below alpha_threshold (alpha_thre 0.01); 0 and 0 evaluate every sample in occupied cells.
    march_steps: int = 512
    early_stop: float = 1e-4
    alpha_threshold: float = 0.01
    # The density/albedo MLP's precision: fp32, or bf16/fp16 autocast on CUDA (outputs, the density activation
    # and the finite-difference normals stay fp32); a CPU always runs fp32. fp32 as the official code (run.sh
    # has no -O); bf16 measured no faster on an H200 (`prolific bench render --field solid`: 32.4 vs 34.2 ms at
    # 512, 14.0 vs 10.7 ms at 64; bench_results/2026-12-01_h200_render_solid*.json), and under autocast the
    # fused MLP of the Triton path gives way to the PyTorch layers. With the `tf32` speed switch (in auto) fp32
    # products are TF32, the fused MLP's too: between the official fp32 and threestudio's fp16, and 3.4x faster
    # in the backward (bench_results/2026-12-02_h200_mlp_sweep); the normals stay at fp32 accuracy.
    mlp_precision: str = "fp32"


@dataclass
class HashGridConfig:
    """The multiresolution hash encoding of stage 1's NeRF and stage 3's albedo field."""
    hash_levels: int = 16
    hash_features: int = 2
    hash_log2_size: int = 19
    hash_base_res: int = 16
    hash_max_res: int = 2048
    # auto = the Triton kernels on CUDA when triton imports, else PyTorch; tcnn = tiny-cuda-nn (CUDA only). auto
    # and triton also run the fields' MLPs as fused Triton kernels (field/mlp.py).
    impl: str = "auto"


@dataclass
class CameraConfig:
    """The training cameras of all three stages (uniform in these ranges) and the turntables' framing."""
    camera_distance: tuple[float, float] = (1.0, 1.5)  # threestudio prolificdreamer.yaml and the official code
    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    fov_deg: tuple[float, float] = (40.0, 70.0)


@dataclass
class GeometryConfig:
    steps: int = 2000
    tet_res: int = 128
    resolution: int = 512
    # Adam on the SDF and the deformation: threestudio prolificdreamer-geometry.yaml (the official code: Adam
    # with the same betas and eps, lr 5 x 1e-3)
    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    # NeRF density level set that becomes the initial surface: threestudio's isosurface_threshold 25 (the
    # official code: 25 x --density_thresh 0.1), or "auto", threestudio's other choice: the mean of the densities
    # above 1e-5 at the grid's vertices, a level that follows how dense the NeRF got.
    density_threshold: float | str = 25.0
    # With "auto": the level is this times that mean (1 is threestudio's rule).
    auto_level_scale: float = 1.0
    # The grid spans the NeRF object's bounding box, padded by 10% of its size per side (threestudio
    # isosurface_coarse_to_fine; the official code scales a cube to the object): finer cells on the object.
    fit_grid: bool = True
    # Initial SDF: "clamped" = clamp(threshold − σ, −1, 1) as both references; "metric" = (threshold − σ)
    # rescaled to metres. The learning rate is in these units (a clamped SDF moves ~200x slower than a metric one).
    sdf_init: str = "clamped"
    guidance_scale: float = 100.0  # SDS on normal maps
    anneal_fraction: float = 1 / 3  # threestudio: t_max 0.98 for the first 5000 of 15000 steps, then 0.5
    # threestudio: normal consistency 1e4 on vertex normals, Laplacian 1e4 on ‖L·v‖ (the official: 5000 on face
    # normals, Laplacian 0.5)
    normal_consistency_weight: float = 1e4
    normal_consistency_on: str = "vertex"  # "vertex" (threestudio) or "face" normals (the official code)
    laplacian_weight: float = 1e4
    # Floaters: parts of the final surface smaller than this fraction of the largest part's area are dropped
    # (0 keeps every part). The toy runs' meshes had 18-77 such parts holding up to a fifth of the faces.
    min_part_fraction: float = 0.05
    checkpoint_every: int = 500
    preview_every: int = 100


@dataclass
class TextureConfig:
    steps: int = 3000
    resolution: int = 512
    # threestudio prolificdreamer-texture.yaml: hash table 1e-2, colour MLP 1e-3, background 1e-3
    lr: float = 1e-2
    mlp_lr: float = 1e-3
    background_lr: float = 1e-3
    # Stage 1's background goes on training (the official code; threestudio trains a fresh one, which would have
    # to relearn what already matches the object)
    train_background: bool = True
    guidance: str = "vsd"
    anneal_fraction: float = 1 / 6  # threestudio: t_max 0.98 for the first 5000 of 30000 steps, then 0.5
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
    gpus: int = 1  # processes the particles are spread over (stages/distributed.py), one GPU each on CUDA
    stages: tuple[str, ...] = STAGES
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    prior: PriorConfig = field(default_factory=PriorConfig)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
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
        "hash_grid": {"hash_levels": 4, "hash_log2_size": 12, "hash_max_res": 64},
        "nerf": {"steps": 6, "resolutions": (16, 24), "resolution_milestones": (3,), "samples_per_ray": 16,
                 "occupancy_res": 16, "occupancy_every": 2, "checkpoint_every": 3, "preview_every": 2,
                 "march_steps": 48},
        "geometry": {"steps": 3, "tet_res": 16, "resolution": 32, "checkpoint_every": 2, "preview_every": 2},
        "texture": {"steps": 3, "resolution": 32, "checkpoint_every": 2, "preview_every": 2},
        "export": {"texture_size": 64, "dilation_px": 2, "turntable_views": 8},
        "prior": {"lora_rank": 2},
    },
    # README's main command: the bundled toy prior (64 px, pixel space) on a CPU in a few minutes.
    # Toy-specific: its captions' view sectors are ±45° (toy/dataset.py) and it only saw white backdrops, so a
    # random solid background makes the object grow over it: with the references' 0.5 the green cone's silhouette
    # IoU falls from 0.38 to 0.21 (CPU, seed 0; bench_results/2026-12-01_cpu_quality_cube_sweep).
    "demo": {
        # The paper's CFG 7.5 suited the toy prior too (its 10k-step version: VSD silhouette IoU 0.46 at 7.5, 0.45 at
        # 5, 0.35 at 2, and at 1 the NeRF fades away in 200 steps; bench_results/2026-12-01_h200_quality_cfg_sweep).
        # Its view sectors are the ±45° it was trained with.
        "prior": {"front_half_width_deg": 45.0, "back_half_width_deg": 45.0},
        "hash_grid": {"hash_levels": 8, "hash_log2_size": 15, "hash_max_res": 256},
        # 200 steps: VSD over the 4 quality prompts x 3 seeds (H200) gave silhouette IoU 0.73 after them, 0.67 after
        # 300 and 0.48 after 400 (the soft shapes shrink as the sparsity loss works on, though the cube rose to
        # 0.83 at 300), and 0.65 after 300 with the surface cut lower to follow them (bench_results/
        # 2026-12-02_h200_quality_demo_steps). The opacity BCE as threestudio has it is worth 0.11 there; stronger
        # (3000) or earlier (from 20%) hurt, and neither a decaying sparsity nor dropping the BCE at 250-300 steps
        # beat 0.73 (bench_results/2026-12-02_h200_quality_sparsity_ramp). These are the 13,088-step prior's; the
        # bundled 13,890-step one gives 0.76 with the same settings (bench_results/2026-12-07_h100_quality_undersize).
        "nerf": {"steps": 200, "resolutions": (32, 64), "resolution_milestones": (80,), "samples_per_ray": 32,
                 "occupancy_res": 32, "occupancy_every": 8, "shading": (0.7, 0.3, 0.0), "random_background": 0.0,
                 "checkpoint_every": 50, "preview_every": 20,
                 # Sparsity 500, not threestudio's 10: at 10 the toy objects outgrow their true size. With the
                 # bundled prior, VSD over the 4 quality prompts x 3 seeds (H200) gave silhouette IoU / Chamfer
                 # 0.488 / 0.073 at 500, 0.511 / 0.086 at 150, 0.497 / 0.099 at 50, 0.508 / 0.114 at 10 (2 seeds;
                 # the cube fills the frame once at 50 and 10), and README's cone on the CPU 0.71 / 0.035 at 500,
                 # 0.59 / 0.086 at 150 (bench_results/2026-12-01_h200_quality_prior13k).
                 "sparsity_weight": 500.0,
                 # Packed renderer, 96 steps: on the demo's trained red cube a 64 px render + backward evaluates
                 # 30k samples instead of the dense renderer's 121k and takes 0.79 s of CPU instead of 2.14 s
                 # (turntable silhouette IoU 0.999 between the two; bench_results/README.md).
                 "march_steps": 96},
        # The toy prior never saw normal maps, so normal-map SDS from it only roughens the surface extracted from
        # the NeRF (area/volume^(2/3) 14.5 -> 24 in 30 steps, measured): the demo keeps the extracted surface.
        # With no geometry step the initial SDF is the surface: a clamped one would put every vertex at the
        # middle of its grid edge, the metric one keeps the level set's true crossing. The level "auto": the
        # 200-step NeRFs stay translucent (peak densities 7-13), so a fixed level cut the softer ones to a core.
        # Re-extracting 12 demo NeRFs (4 quality prompts x seeds 0-2, 2-core CPU) gave silhouette IoU / Chamfer
        # 0.734 / 0.053 with auto, 0.456 / 0.069 at 5, 0.647 / 0.056 at 1 (bench_results/2026-12-02_cpu_demo_levels);
        # twice auto, a departure from threestudio's rule, 0.759 / 0.050 (the cube and cone less swollen by their
        # fog; 1.5x 0.754 / 0.051, 3x 0.760 / 0.049; bench_results/2026-12-02_cpu_demo_levels_scaled).
        "geometry": {"steps": 0, "tet_res": 48, "resolution": 64, "sdf_init": "metric", "density_threshold": "auto",
                     "auto_level_scale": 2.0},
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
    # 15k geometry steps, 30k texture steps, 512 renders, wide t range for the first 5k steps, hash grid up to
    # 4096 (per_level_scale 1.447). README's table lists every setting against both references.
    "paper": {
        "hash_grid": {"hash_max_res": 4096},
        "nerf": {"steps": 25000, "resolution_milestones": (5000,), "checkpoint_every": 2500},
        "geometry": {"steps": 15000},
        "texture": {"steps": 30000},
        "export": {"texture_size": 2048},
    },
}

_SECTIONS = {"prior": PriorConfig, "cameras": CameraConfig, "hash_grid": HashGridConfig, "nerf": NerfConfig,
             "geometry": GeometryConfig, "texture": TextureConfig, "export": ExportConfig}
# Settings that moved to another section, by old section: still read there, with a warning naming the new place.
MOVED = {"nerf": {"camera_distance": "cameras", "elevation_deg": "cameras", "fov_deg": "cameras",
                  **{f"hash_{k}": "hash_grid" for k in ("levels", "features", "log2_size", "base_res", "max_res")}}}
SECTIONS = tuple(_SECTIONS)  # as requests and --set name them


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


def make_config(prompt: str, preset: str = "standard", overrides: dict[str, Any] | None = None,
                warn: Callable[[str], None] | None = None) -> JobConfig:
    """Build and validate a job config from a preset plus nested overrides such as {"nerf": {"steps": 10}}.
    A setting given under its old section (MOVED) is moved to its new one, and a retired prior.speed switch is
    ignored; `warn` (default: a FutureWarning) gets one sentence for each."""
    if preset not in PRESETS:
        raise BadRequest(f"Unknown preset '{preset}'. Choose one of: {', '.join(PRESETS)}.")
    values = _merge(PRESETS[preset], moved_settings(overrides or {}, warn))
    top = {k: v for k, v in values.items() if k not in _SECTIONS}
    kwargs: dict[str, Any] = {"prompt": prompt, "preset": preset,
                              **_typed_values(JobConfig, top, exclude=("prompt", "preset"))}
    for key, cls in _SECTIONS.items():
        if key in values:
            if not isinstance(values[key], dict):
                raise BadRequest(f"Setting '{key}' must be a mapping of its fields.")
            kwargs[key] = _build_section(cls, values[key], key)
    cfg = JobConfig(**kwargs).validate()
    if cfg.prior.speed != "auto":
        SpeedOptions.parse(cfg.prior.speed, warn)  # a retired switch is said like a moved setting
    return cfg


def moved_settings(overrides: dict[str, Any], warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`overrides` with the settings of MOVED in their new sections, each move told to `warn` (default: a
    FutureWarning)."""
    out = copy.deepcopy(overrides)
    for old, keys in MOVED.items():
        section = out.get(old)
        if not isinstance(section, dict):
            continue
        for key in [k for k in section if k in keys]:
            new = keys[key]
            target = out.setdefault(new, {})
            if not isinstance(target, dict):
                raise BadRequest(f"Setting '{new}' must be a mapping of its fields.")
            target.setdefault(key, section.pop(key))
            message = f"The setting {old}.{key} is now {new}.{key}; the old name will stop working in a later version."
            if warn is None:
                warnings.warn(message, FutureWarning, stacklevel=3)
            else:
                warn(message)
    return out


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
    _require(_is_int(cfg.gpus) and 1 <= cfg.gpus <= cfg.particles,
             f"gpus must be a whole number from 1 to the number of particles ({cfg.particles}): each process "
             f"needs a particle of its own (got {cfg.gpus!r}).")
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
    _require(0.0 <= p.lora_t_min < p.lora_t_max <= 1.0, "The LoRA time range needs 0 <= lora_t_min < lora_t_max <= 1.")
    _require(0.0 <= p.camera_dropout <= 1.0, "prior.camera_dropout must lie in [0, 1].")
    _require(0.0 <= p.front_half_width_deg and 0.0 <= p.back_half_width_deg
             and p.front_half_width_deg + p.back_half_width_deg <= 180.0,
             "prior.front_half_width_deg and back_half_width_deg must be >= 0 and together at most 180.")
    _require(-90.0 <= p.overhead_elevation_deg <= 90.0, "prior.overhead_elevation_deg must lie in [-90, 90].")
    _require(p.dtype in ("auto", "fp32", "fp16", "bf16"), f"Unknown dtype '{p.dtype}': use auto, fp32, fp16 or bf16.")
    _require(isinstance(p.speed, str), "prior.speed must be text such as auto, none or sdpa,batch.")
    if p.speed != "auto":
        # BadRequest naming an unknown switch; make_config tells a retired one to its `warn`, once.
        speed = SpeedOptions.parse(p.speed, already_told)
        _require(not speed.bf16 or p.dtype in ("auto", "bf16"),
                 f"prior.speed asks for bf16 but prior.dtype is {p.dtype}: drop one of them.")
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
    _require(n.mlp_lr > 0 and n.background_lr > 0, "nerf.mlp_lr and nerf.background_lr must be positive.")
    _require(0.0 <= n.random_background <= 1.0, "nerf.random_background must lie in [0, 1].")
    _require(min(n.sparsity_weight, n.opacity_weight, n.entropy_weight) >= 0,
             "nerf.sparsity_weight, opacity_weight and entropy_weight must not be negative.")
    _require(0.0 <= n.opacity_start_fraction <= 1.0, "nerf.opacity_start_fraction must lie in [0, 1].")
    _require(n.renderer in RENDERERS, f"Unknown nerf.renderer '{n.renderer}': use {', '.join(RENDERERS)}.")
    _require(cfg.hash_grid.impl in HASHGRIDS,
             f"Unknown hash_grid.impl '{cfg.hash_grid.impl}': use {', '.join(HASHGRIDS)}.")
    _require(8 <= n.march_steps <= 4096, "nerf.march_steps must lie in 8..4096.")
    _require(0.0 <= n.early_stop < 1.0, "nerf.early_stop must lie in [0, 1).")
    _require(0.0 <= n.alpha_threshold < 1.0, "nerf.alpha_threshold must lie in [0, 1).")
    _require(n.mlp_precision in MLP_PRECISIONS,
             f"Unknown nerf.mlp_precision '{n.mlp_precision}': use {', '.join(MLP_PRECISIONS)}.")
    g = cfg.geometry
    _require(4 <= g.tet_res <= 512, "geometry.tet_res must lie in 4..512.")
    _require(len(g.betas) == 2 and all(0.0 <= b < 1.0 for b in g.betas) and g.eps > 0,
             "geometry.betas must be two numbers in [0, 1) and geometry.eps positive.")
    _require(g.sdf_init in ("clamped", "metric"), f"Unknown geometry.sdf_init '{g.sdf_init}': use clamped or metric.")
    _require(g.normal_consistency_on in ("vertex", "face"),
             f"Unknown geometry.normal_consistency_on '{g.normal_consistency_on}': use vertex or face.")
    _require(min(g.normal_consistency_weight, g.laplacian_weight) >= 0,
             "geometry.normal_consistency_weight and laplacian_weight must not be negative.")
    level = g.density_threshold
    _require(level == "auto" if isinstance(level, str) else level > 0,
             f'geometry.density_threshold must be a positive number or "auto" (got {level!r}).')
    _require(g.auto_level_scale > 0, "geometry.auto_level_scale must be positive.")
    t = cfg.texture
    _require(t.mlp_lr > 0 and t.background_lr > 0, "texture.mlp_lr and texture.background_lr must be positive.")
    for name, fraction in (("geometry", g.anneal_fraction), ("texture", t.anneal_fraction)):
        _require(0.0 <= fraction <= 1.0, f"{name}.anneal_fraction must lie in [0, 1].")
    _require(0.0 <= cfg.geometry.min_part_fraction <= 1.0, "geometry.min_part_fraction must lie in [0, 1].")
    _require(8 <= cfg.geometry.resolution <= 2048 and 8 <= cfg.texture.resolution <= 2048,
             "Stage resolutions must lie in 8..2048.")
    e = cfg.export
    _require(16 <= e.texture_size <= 8192, "export.texture_size must lie in 16..8192.")
    _require(all(f in ("glb", "obj") for f in e.formats), "export.formats may hold glb and obj.")
    _require(e.turntable_views >= 1, "export.turntable_views must be >= 1.")
