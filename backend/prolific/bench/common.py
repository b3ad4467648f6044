"""What every bench subcommand shares: arguments, the model to load, the environment block, the JSON output."""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from ..errors import BadRequest
from ..prior.speed import SpeedOptions, log

PROMPT = "a DSLR photo of a delicious hamburger"
BUILT_SHAPES = ("sd21", "tiny")


# --field of the NeRF benches -> the initialisation blob's λ (None: stage 1's own). `blob` is stage 1's
# initialisation, a soft ball of radius 0.5 that no ray crosses opaquely (the most samples per pixel a young object
# has); `solid` the same ball with a sharp opaque surface (λ = 1000: a ray's transmittance falls below early_stop
# ≈ 0.1 inside it), as a trained object has when stage 1 renders at 512 px (after its first milestone).
FIELDS = {"blob": None, "solid": 1000.0}


def set_field(nerf, field: str) -> None:
    """Give a freshly built NeRF the --field's density."""
    if FIELDS[field] is not None:
        nerf.blob_lambda = FIELDS[field]


def add_common_args(parser: argparse.ArgumentParser, resolutions: str) -> None:
    parser.add_argument("--model", default=None,
                        help="sd21 (build SD-2.1-base-shaped random weights; the default on a GPU), tiny (the "
                             "same architecture at toy width; the default on a CPU), or a diffusers folder / "
                             "Hugging Face id")
    parser.add_argument("--model-cache", default=None,
                        help="folder for the built random-weight models (default: $TMPDIR/prolific-bench)")
    parser.add_argument("--preset", default=None, help="config preset (default: standard on GPU, test on CPU)")
    parser.add_argument("--resolutions", default=None,
                        help=f"comma-separated render resolutions (default: {resolutions} on a GPU, the "
                             "preset's on a CPU)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per resolution")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--guidance", choices=("vsd", "sds"), default=None, help="default: the preset's")
    parser.add_argument("--opt", action="append", default=None,
                        help="speed options, comma-separated (bf16, tf32, sdpa, channels-last, vae-matmul, vae-norm, "
                             "unet-norm, geglu, batch, fused-adam, graphs, overlap, lora-kernels; best; "
                             "none). Repeat --opt to measure several variants in one process. Default: best on CUDA, "
                             "sdpa,batch on CPU")
    parser.add_argument("--reference", action="store_true",
                        help="run the reference implementations' way only (fp16 eager, separate LoRA UNet copy, "
                             "PyTorch hash grid, no occupancy skipping)")
    parser.add_argument("--compare", action="store_true",
                        help="run the reference first, then each --opt variant, and print the speed-ups")
    parser.add_argument("--reference-occupancy", action="store_true",
                        help="let the reference skip empty space too (when evaluating every sample does not fit)")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="start no further variant after S seconds (the JSON says which were skipped)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadRequest("--device cuda was asked for but no CUDA GPU is visible.")
    return device


def parse_resolutions(text: str | None, device: torch.device, gpu_default: str, cpu_default) -> list[int]:
    if text is None:
        text = gpu_default if device.type == "cuda" else ",".join(str(r) for r in cpu_default)
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadRequest(f"--resolutions must be comma-separated whole numbers, got '{text}'.") from None
    if not values or any(not 8 <= v <= 2048 for v in values):
        raise BadRequest("--resolutions must lie in 8..2048.")
    return values


def variants(args, device: torch.device) -> list[tuple[str, SpeedOptions, bool]]:
    """(name, options, reference?) in the order they run."""
    from ..prior.speed import reference_options

    default = "best" if device.type == "cuda" else "sdpa,batch"
    chosen = [(text, SpeedOptions.parse(text, log), False) for text in (args.opt or [default])]
    ref = [("reference", reference_options(), True)]
    if args.reference and not args.compare:
        return ref
    return ref + chosen if args.compare else chosen


def prepare_model(args, device: torch.device) -> str:
    """The model folder or id to load: built random weights for sd21/tiny, else what was given."""
    if args.model is None:
        args.model = "sd21" if device.type == "cuda" else "tiny"
    if args.model not in BUILT_SHAPES:
        return args.model
    from .sd_shapes import build_sd_shaped_model

    cache = Path(args.model_cache or os.path.join(tempfile.gettempdir(), "prolific-bench"))
    # fp16 on disk halves the write and read; every variant casts to its own dtype when loading.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    log(f"bench: preparing {args.model}-shaped random-weight model in {cache / args.model}")
    return str(build_sd_shaped_model(cache / args.model, args.model, device=device, dtype=dtype, seed=args.seed))


def environment(device: torch.device) -> dict:
    import diffusers
    import peft

    info = {"device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    else:
        info["device_name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def memory_block(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "peak_reserved_gb": round(torch.cuda.max_memory_reserved(device) / 2**30, 3)}


def add_speedups(result: dict) -> None:
    """ms(reference) / ms(variant) per resolution, when a reference variant ran."""
    runs = result["variants"]
    ref = next((v for v in runs if v.get("reference")), None)
    if ref is None:
        return
    speedups = {}
    for v in runs:
        if v is ref:
            continue
        for res, r in v.get("resolutions", {}).items():
            base = ref.get("resolutions", {}).get(res, {}).get("ms_per_step")
            if base and r.get("ms_per_step"):
                speedups.setdefault(v["name"], {})[res] = round(base / r["ms_per_step"], 2)
    result["speedup_vs_reference"] = speedups


def run_variants(result: dict, runs, args, device: torch.device, measure) -> None:
    """measure(name, options, reference) -> dict for each variant, in order. A variant that fails is reported
    and the next one runs; with --json the file is rewritten after every variant, so a run cut short by a
    time-out still leaves what it measured."""
    started = time.monotonic()
    for name, options, reference in runs:
        entry = {"name": name, "reference": reference, "options": options.to_dict()}
        if args.time_limit is not None and time.monotonic() - started > args.time_limit:
            entry["skipped"] = f"time limit of {args.time_limit:g}s reached"
            log(f"bench: skipping {name}: {entry['skipped']}")
        else:
            try:
                entry = measure(name, options, reference)
            except Exception as err:  # noqa: BLE001 - report it and measure the next variant
                log(f"bench [{name}]: failed: {error_text(err)}")
                entry["error"] = error_text(err)
                free_memory(device)
        result["variants"].append(entry)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**result, "complete": False}, indent=2, default=str) + "\n")
    add_speedups(result)
    result["complete"] = True
    result["wall_s"] = round(time.monotonic() - started, 1)


def emit(result: dict, path: Path | None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    for name, ratios in result.get("speedup_vs_reference", {}).items():
        log("bench: speed-up of " + name + " over reference: " +
            ", ".join(f"{res}px x{ratio}" for res, ratio in ratios.items()))


def error_text(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:500]


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def capture_seconds(distill) -> float:
    """The time an estimator has spent capturing CUDA graphs so far (0 without `graphs`)."""
    return distill.captures.capture_s if distill.captures is not None else 0.0


def graphs_block(distill, captured_before: float) -> dict:
    """How a variant's diffusion work ran at one resolution: captured (with the capture time) or eagerly (why)."""
    if distill.captures is None:
        return {}
    if not distill.captures.enabled:
        return {"graphs": f"eager: {distill.captures.eager_reason}"}
    return {"graphs": "replayed", "capture_s": round(capture_seconds(distill) - captured_before, 3)}


def record_failure(result: dict, err: BaseException, device: torch.device) -> dict:
    """Put a failed step's error (and out_of_memory, when it is one) into `result`; free memory for the next."""
    result["error"] = error_text(err)
    if is_oom(err):
        result["error_code"] = "out_of_memory"
    result.update(memory_block(device))
    log(f"bench: step failed: {result['error']}")
    free_memory(device)
    return result
