"""`prolific generate|serve|bench`: the command line.

Errors end the process with one line `error: <sentence>` on stderr: exit code 2 for input the user can fix
(bad settings, missing model, no GPU), 1 for anything else, 130 when cancelled with Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from . import __version__
from .config import PRESETS
from .errors import BadRequest, Cancelled, JobExists, ModelNotFound, NoGpu, ProlificError
from .events import JobWarning
from .interrupt import EXIT_INTERRUPTED, on_ctrl_c

USER_ERRORS = (BadRequest, ModelNotFound, NoGpu)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prolific", description="Text-to-3D with Variational Score Distillation.")
    parser.add_argument("--version", action="version", version=f"prolific {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{generate,serve,bench}")
    sub.required = True

    gen = sub.add_parser("generate", help="make 3D objects from a prompt",
                         description="Make 3D objects from a prompt into OUT/<name>/.")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--out", required=True, type=Path, help="output folder; the job gets a subfolder")
    gen.add_argument("--name", help="job subfolder name (default: from the prompt and seed)")
    gen.add_argument("--model", help="Hugging Face id or local diffusers folder (default: bundled toy prior)")
    gen.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (default: demo for the bundled toy prior; for a "
                     "model standard on a GPU, draft on a CPU)")
    gen.add_argument("--seed", type=int)
    gen.add_argument("--particles", type=int, help="number of variations (VSD particles)")
    gen.add_argument("--gpus", type=int, metavar="K",
                     help="spread the particles over K processes, one GPU each (on a CPU: K processes); default 1")
    gen.add_argument("--guidance", help="vsd (default) or sds")
    gen.add_argument("--stages", help="comma-separated subset of nerf,geometry,texture")
    for stage in ("nerf", "geometry", "texture"):
        gen.add_argument(f"--steps-{stage}", type=int, metavar="N", help=f"override {stage}.steps")
    gen.add_argument("--negative-prompt")
    gen.add_argument("--formats", help="extra export formats beside mesh.npz: glb,obj")
    gen.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    gen.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="any other setting, e.g. --set nerf.lr=0.005 (value read as JSON when it parses)")
    gen.add_argument("--resume", action="store_true", help="continue the job in OUT/<name> from its checkpoints")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    serve = sub.add_parser("serve", help="JSON-lines server on stdin/stdout (used by the Blender add-on)")
    serve.add_argument("--model", help="default model for jobs that name none (default: bundled toy prior)")
    serve.add_argument("--device", default="auto", help="device named in hello (default: auto)")

    sub.add_parser("bench", help="benchmarks (prolific bench --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from . import bench  # heavy, and only for benchmarking

        return bench.main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from .server import serve_stdio

            return serve_stdio(args.model, args.device)
        return generate(args, argv)
    except KeyboardInterrupt:
        print("error: aborted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ProlificError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return EXIT_INTERRUPTED if isinstance(err, Cancelled) else 2 if isinstance(err, USER_ERRORS) else 1
    except Exception as err:  # a bug: show where, then the one-line summary
        traceback.print_exc()
        print(f"error: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def parse_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """`--set` settings with the flags on top (job_request.request_overrides)."""
    from .job_request import request_overrides

    over: dict[str, Any] = {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"--set needs SECTION.KEY=VALUE (got '{item}').")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = over
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    given = {name: getattr(args, name) for name in ("model", "guidance", "negative_prompt", "seed", "particles",
                                                     "gpus", "device", "steps_nerf", "steps_geometry", "steps_texture")}
    for name in ("stages", "formats"):  # comma-separated lists
        text = getattr(args, name)
        given[name] = None if text is None else [s.strip() for s in text.split(",") if s.strip()]
    return request_overrides({k: v for k, v in given.items() if v is not None}, over)


def job_name(prompt: str, seed: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:48] or "job"
    return f"{slug}_seed{seed}"


class ProgressBar:
    """tqdm bar on stderr, one per stage; the postfix shows the ETA of the whole job. Warnings, and a stage that
    continues from a checkpoint, get a line of their own."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if isinstance(event, JobWarning):
            tqdm.write(f"warning: {event.message}", file=sys.stderr)
            return
        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            if 0 < event.step < event.total:
                print(f"Continuing {event.stage} from its checkpoint at step {event.step} of {event.total}.",
                      file=sys.stderr, flush=True)
            if self.enabled:
                self.bar = tqdm(total=event.total, initial=event.step, desc=event.stage, file=sys.stderr,
                                unit="step", dynamic_ncols=True,
                                bar_format="{desc} {bar} {n_fmt}/{total_fmt} {rate_fmt}{postfix}")
        if self.bar is None:
            return
        self.bar.n = event.step
        if event.eta_s is not None:
            self.bar.set_postfix_str(f"ETA {format_duration(event.eta_s)}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def make_job_config(args: argparse.Namespace, overrides: dict[str, Any]):
    """The job's settings; without --preset, the preset that fits the device and model (config.default_preset),
    announced on stderr."""
    from .job_request import job_config

    cfg, chosen = job_config(args.prompt, args.preset, overrides,
                             lambda message: print(f"warning: {message}", file=sys.stderr))
    if not chosen:
        return cfg
    if cfg.prior.model is None:
        print(f"No --preset given: using {cfg.preset}, the preset made for the bundled toy prior.", file=sys.stderr)
    elif cfg.preset == "draft":  # a real model on a CPU
        print(f"warning: No --preset given: using {cfg.preset}, the cheapest preset for a real model; on a CPU it "
              "still takes many hours (a GPU takes minutes). Pass --preset to choose.", file=sys.stderr)
    return cfg


def resume_command(argv: list[str], preset: str) -> str:
    """The command that continues this job: the same arguments with the preset spelled out and --resume."""
    extra = ([] if any(a == "--preset" or a.startswith("--preset=") for a in argv) else ["--preset", preset])
    extra += [] if "--resume" in argv else ["--resume"]
    return shlex.join(["prolific", *argv, *extra])


def generate(args: argparse.Namespace, argv: list[str]) -> int:
    from .pipeline import run_job

    started = time.monotonic()
    cfg = make_job_config(args, parse_overrides(args))
    name = args.name or job_name(cfg.prompt, cfg.seed)
    if cfg.prior.model is None:
        from .prior.bundled import vocabulary_hint

        print(f"Using the bundled toy prior (a tiny demo model). {vocabulary_hint()} For real results pass "
              "--model stabilityai/stable-diffusion-2-1-base (or a local diffusers folder).", file=sys.stderr)
    bar = ProgressBar(not args.quiet)
    cancel, finished = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}
    again = resume_command(argv, cfg.preset)

    def work() -> None:
        try:
            outcome["result"] = run_job(cfg, args.out, name, sink=bar, cancel=cancel, resume=args.resume)
        except BaseException as err:  # handed to the main thread, which reports it
            outcome["error"] = err
        finally:
            finished.set()

    def cancelling() -> None:  # the bar is the worker's: print below it, do not close it
        cancel.set()
        print("\nCancelling after the current step, then saving a checkpoint (Ctrl-C again to abort at once)...",
              file=sys.stderr, flush=True)

    def abort() -> None:
        print(f"\nerror: Aborted. The checkpoints saved so far are kept; to continue from them, run: {again}",
              file=sys.stderr, flush=True)

    # The job runs on a worker thread so that Ctrl-C can stop it at a step boundary, where the stage saves a
    # checkpoint. Ctrl-C sets the cancel event instead of raising KeyboardInterrupt: raised inside Thread.join,
    # that makes Python 3.11 mark the still-running thread as ended (bpo-45274's fix releases the lock the thread
    # holds), which is how Ctrl-C used to crash the CLI with KeyError 'result' and an abort.
    worker = threading.Thread(target=work, name="prolific-job", daemon=True)
    with on_ctrl_c(cancelling, abort):
        worker.start()
        while not finished.wait(0.2):  # wake up often: Python runs signal handlers on the main thread only
            pass
    bar.close()
    if "error" in outcome:
        err = outcome["error"]
        if isinstance(err, Cancelled):
            saved = any((args.out / name / "checkpoints").glob("*.pt"))
            tail = f" To continue from its checkpoint, run: {again}" if saved else " Nothing was saved yet."
            raise Cancelled(err.message + tail, err.stage, err.step, err.total)
        if isinstance(err, JobExists):
            raise BadRequest(f"{err.job_dir} already holds a job (checkpoints of {', '.join(err.stages)}); nothing "
                             "was changed. Add --resume to continue it, or --name NAME to start another job beside "
                             "it.") from None
        raise err
    result = outcome["result"]
    print(f"Result: {result['job_dir']} (finished in {format_duration(time.monotonic() - started)})")
    for k, obj in enumerate(result["objects"]):
        shown = obj.get("mesh") or obj.get("checkpoint")
        print(f"  object {k}: {shown}")
    return 0
