"""Train the bundled toy prior on procedural renders; resumable, time-budgeted, exports the bundled folder.

    python -m prolific.toy.train --out backend/prolific/models/toy --work out/toy_train --minutes 8

Data are rendered on the device into a pool of images that is refreshed as training goes (each image is used
about `--reuse` times), so nothing is written to disk. bf16 autocast on CUDA, AdamW with warmup and a cosine
decay over the run's time (or --steps, whichever ends first), the v-prediction loss (--prediction), 10% empty
captions for classifier-free guidance, EMA of the weights; on CUDA the step is replayed from a CUDA graph
(--step graph, the default; `train_step.py`), optionally torch.compile (--compile). A checkpoint (model, EMA,
optimiser, step, time) is written every --ckpt-minutes and at the end; --resume continues from it. The EMA weights
are exported in fp16 at every checkpoint; --init-from starts a new run from such an exported folder (weights
and EMA, a fresh optimiser), for machines where only the exported model can be kept between runs.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .dataset import (OVERSIZE_SCALE, P_OVERSIZE, P_UNDERSIZE, UNDERSIZE_SCALE, ToyData, check_oversize,
                      check_undersize)
from .model import PREDICTION_TYPES, build_models, build_tokenizer, fp16_bytes, make_scheduler, save_model, tokenize
from .train_step import make_optimizer, make_step, set_lr

EXPORT_MARGIN_S = 25.0  # time kept at the end of --minutes for the last checkpoint and the export
P_EMPTY_CAPTION = 0.10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m prolific.toy.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model folder to export (the bundled layout)")
    p.add_argument("--work", type=Path, default=None, help="checkpoint folder (default: <out>-train)")
    p.add_argument("--steps", type=int, default=100_000, help="stop after this many steps in total")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of this run, export included")
    p.add_argument("--total-minutes", type=float, default=None,
                   help="training time the lr schedule spans across resumed runs (default: this run's)")
    # The H100 step time was the same at batch 128 and 256 (launch-bound), so the larger batch is free.
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--size", choices=("full", "tiny"), default="full")
    # ε prediction (the first bundled model) leaves the x0 estimate at high noise 100x less constrained than v
    # does: its samples came out with grey or complementary-tinted backgrounds although ε's error was tiny.
    p.add_argument("--prediction", choices=PREDICTION_TYPES, default="v_prediction")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet (falls back to eager when compiling fails)")
    p.add_argument("--step", choices=("graph", "eager"), default="graph",
                   help="graph: replay the training step from a CUDA graph on CUDA (default); eager: plain PyTorch")
    # NCHW by default: on the H200 the CUDA-graph step ran at 7.0 it/s in NCHW vs 6.15 in channels-last (the
    # 2026-12-01 part 3/4 training logs; the small convolutions gain less than the layout copies around GroupNorm cost).
    p.add_argument("--channels-last", action="store_true",
                   help="keep the UNet's activations channels-last on CUDA (default: NCHW)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="start from an exported model folder (its weights as model and EMA, a fresh optimiser)")
    p.add_argument("--oversize", type=float, default=P_OVERSIZE,
                   help="share of images showing an object larger than life under the empty caption")
    p.add_argument("--oversize-scale", type=_scale_range, default=OVERSIZE_SCALE, metavar="LOW,HIGH",
                   help="the range of their scale")
    p.add_argument("--undersize", type=float, default=P_UNDERSIZE,
                   help="share of images showing an object smaller than life under the empty caption")
    p.add_argument("--undersize-scale", type=_scale_range, default=UNDERSIZE_SCALE, metavar="LOW,HIGH",
                   help="the range of their scale")
    p.add_argument("--pool", type=int, default=8192, help="images kept rendered on the device")
    p.add_argument("--chunk", type=int, default=1024, help="images rendered per refresh")
    p.add_argument("--reuse", type=float, default=8.0, help="mean number of times each rendered image is used")
    p.add_argument("--no-holdout", dest="holdout", action="store_false",
                   help="also train on the held-out (shape, colour) pairs")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--ckpt-minutes", type=float, default=2.0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    try:
        check_oversize(args.oversize, args.oversize_scale)
        check_undersize(args.undersize, args.undersize_scale, args.oversize)
    except ValueError as err:
        p.error(str(err))
    args.work = args.work or args.out.with_name(args.out.name + "-train")
    args.pool = max(args.pool, args.batch)
    args.chunk = min(args.chunk, args.pool)
    return args


def _scale_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 1.3,2.2, got '{text}'") from None
    return low, high


def log(msg: str) -> None:
    print(msg, flush=True)


class Pool:
    """Rendered images (uint8, on the device) and their caption token ids; a ring buffer refreshed in chunks."""

    def __init__(self, data: ToyData, tokenizer, size: int, device: torch.device, generator: torch.Generator):
        self.data, self.tokenizer, self.device, self.generator = data, tokenizer, device, generator
        s = data.image_size
        self.images = torch.empty(size, 3, s, s, dtype=torch.uint8, device=device)
        self.ids = torch.empty(size, tokenizer.model_max_length, dtype=torch.long, device=device)
        self.next, self.filled = 0, 0

    def refresh(self, n: int) -> None:
        n = min(n, len(self.images))
        batch = self.data.sample(n, self.generator, self.device)
        slots = (self.next + torch.arange(n, device=self.device)) % len(self.images)
        self.images[slots] = (batch.images * 255 + 0.5).clamp(0, 255).to(torch.uint8)
        self.ids[slots] = tokenize(self.tokenizer, batch.captions).to(self.device)
        self.next = (self.next + n) % len(self.images)
        self.filled = min(self.filled + n, len(self.images))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.filled, (n,), device=self.device, generator=self.generator)
        return self.images[idx].float() / 127.5 - 1.0, self.ids[idx]


def lr_at(step: int, progress: float, args: argparse.Namespace) -> float:
    """Linear warm-up over this run's first --warmup steps (`step` counts from the run's start), then cosine."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def init_from_export(folder: Path, unet, text, args: argparse.Namespace) -> dict:
    """Load an exported model folder's (fp16 EMA) weights into `unet` and `text`; the run continues its step count
    and training time with a fresh optimiser (hence a new warm-up)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    info = json.loads((folder / "toy.json").read_text())
    if info.get("prediction", "epsilon") != args.prediction:
        sys.exit(f"{folder} was trained with --prediction {info.get('prediction', 'epsilon')}; pass it or start fresh.")
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").float().state_dict())
    text.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder").float().state_dict())
    return {"step": int(info.get("steps", 0)), "train_seconds": 60.0 * float(info.get("train_minutes", 0.0)),
            "losses": []}


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def fast_cuda_math(cuda: bool):
    """TF32 matmuls/convolutions and cuDNN autotuning for a training run on CUDA, put back as they were after (a
    test or a server may call `main` inside a longer-lived process)."""
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), \
        (torch.backends.cudnn, "benchmark")
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        if cuda:
            for owner, name in flags:
                setattr(owner, name, True)
        yield
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)


def main(argv: list[str] | None = None) -> dict:
    t_start = time.monotonic()
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with fast_cuda_math(device.type == "cuda"):
        return train(args, device, t_start)


def train(args: argparse.Namespace, device: torch.device, t_start: float) -> dict:
    cuda = device.type == "cuda"
    deadline = t_start + args.minutes * 60 - EXPORT_MARGIN_S
    torch.manual_seed(args.seed)

    tokenizer = build_tokenizer(args.work / "tokenizer")
    unet, text = build_models(tokenizer, args.size)
    ckpt_path = args.work / "checkpoint.pt"
    state = {"step": 0, "train_seconds": 0.0, "losses": []}
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["size"] != args.size:
            sys.exit(f"{ckpt_path} holds a '{state['size']}' model; pass --size {state['size']} or a new --work.")
        saved_prediction = state.get("prediction", "epsilon")
        if saved_prediction != args.prediction:
            sys.exit(f"{ckpt_path} was trained with --prediction {saved_prediction}; pass it or use a new --work.")
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
    elif args.init_from is not None:
        state = init_from_export(args.init_from, unet, text, args)
    ema_unet, ema_text = copy.deepcopy(unet), copy.deepcopy(text)
    if "ema_unet" in state:
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text"])
    for m in (unet, text, ema_unet, ema_text):
        m.to(device)
    channels_last = cuda and args.channels_last
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    ema_unet.requires_grad_(False).eval()
    ema_text.requires_grad_(False).eval()
    params = [p for m in (unet, text) for p in m.parameters()]
    ema_params = [p for m in (ema_unet, ema_text) for p in m.parameters()]
    opt = make_optimizer(params, args.lr, device)
    if "opt" in state:
        opt.load_state_dict(state["opt"])
    step, seconds_before = state["step"], state["train_seconds"]
    run_start_step = step
    log(f"toy prior: {args.size} model, {fp16_bytes(unet, text) / 1e6:.1f} MB in fp16, device {device}"
        f"{' ' + torch.cuda.get_device_name(device) if cuda else ''}; "
        f"{'resumed at step ' + str(step) if step else 'from scratch'}; batch {args.batch}, lr {args.lr}, "
        f"budget {args.minutes} min")

    scheduler = make_scheduler(args.prediction)
    alphas = scheduler.alphas_cumprod.to(device)
    generator = torch.Generator(device).manual_seed(args.seed * 1_000_003 + step)
    data = ToyData(int(unet.config.sample_size), holdout=args.holdout, oversize=args.oversize,
                   oversize_scale=args.oversize_scale, undersize=args.undersize,
                   undersize_scale=args.undersize_scale)
    pool = Pool(data, tokenizer, args.pool, device, generator)
    fill_start = time.monotonic()
    while pool.filled < len(pool.images):
        pool.refresh(args.chunk)
    fill_s = time.monotonic() - fill_start
    empty_ids = tokenize(tokenizer, [""]).to(device)
    refresh_every = max(1, round(args.chunk * args.reuse / args.batch))
    # No autocast weight cache: a CUDA graph must recast the weights at every replay.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda, cache_enabled=False)
    log(f"data pool of {pool.filled} images rendered in {fill_s:.1f} s ({pool.filled / fill_s:.0f} img/s); "
        f"{args.chunk} new images every {refresh_every} steps; started {time.monotonic() - t_start:.0f} s ago")

    total_s = (args.total_minutes * 60 - EXPORT_MARGIN_S) if args.total_minutes else None
    loop_start = time.monotonic()
    budget_s = seconds_before + max(deadline - loop_start, 1.0) if total_s is None else total_s
    last_ckpt, window_t, window_step, losses = loop_start, loop_start, step, []
    refresh_s = 0.0  # time spent rendering new pool images in the current log window

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "size": args.size, "prediction": args.prediction, "step": step,
            "train_seconds": seconds_before + time.monotonic() - loop_start,
            "unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema_unet.state_dict(),
            "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "losses": state["losses"]})
        save_model(args.out, ema_unet, ema_text, tokenizer, run_info(), args.prediction)

    def run_info() -> dict:
        return {"steps": step, "batch": args.batch, "prediction": args.prediction,
                "train_minutes": round((seconds_before + time.monotonic() - loop_start) / 60, 2),
                "holdout": args.holdout, "oversize": [args.oversize, *args.oversize_scale],
                "undersize": [args.undersize, *args.undersize_scale],
                "final_loss": state["losses"][-1][1] if state["losses"] else None,
                "device": torch.cuda.get_device_name(device) if cuda else "cpu"}

    def loss_fn(x_t, t, ids, target) -> torch.Tensor:
        with autocast:
            pred = unet(x_t, t, encoder_hidden_states=text(ids)[0]).sample
        return (pred.float() - target).square().mean()

    first_compiled_step = args.compile
    if args.compile:
        unet.compile(dynamic=False)  # in place: state_dict keys stay those of the plain module
    train_step = make_step("eager" if args.compile else args.step, loss_fn, params, opt, device, log)
    log(f"training step: {'torch.compile' if args.compile else train_step.name}"
        f"{', channels-last' if channels_last else ''}")
    unet.train()
    text.train()
    while step < args.steps and time.monotonic() < deadline:
        if step % refresh_every == 0:
            refresh_start = time.monotonic()
            pool.refresh(args.chunk)
            refresh_s += time.monotonic() - refresh_start
        x0, ids = pool.batch(args.batch)
        drop = torch.rand(args.batch, device=device, generator=generator) < P_EMPTY_CAPTION
        ids = torch.where(drop[:, None], empty_ids, ids)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), device=device, generator=generator)
        noise = torch.randn(x0.shape, device=device, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        # Unweighted: min-SNR weighting starved the low-noise steps of the first H100 run (noisy samples).
        target = noise if args.prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        elapsed = seconds_before + time.monotonic() - loop_start
        lr = lr_at(step - run_start_step, max(step / args.steps, elapsed / budget_s), args)
        set_lr(opt, lr)
        try:
            loss = train_step(x_t, t, ids, target)
        except Exception as err:  # noqa: BLE001 - compiling is optional: the first step falls back to eager
            if not first_compiled_step:
                raise
            log(f"torch.compile failed ({type(err).__name__}: {err}); training eagerly")
            unet._compiled_call_impl = None
            torch._dynamo.reset()
            loss = train_step(x_t, t, ids, target)
        first_compiled_step = False
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)
        losses.append(loss.detach())

        if step % args.log_every == 0 or step == args.steps:
            now = time.monotonic()
            mean_loss = torch.stack(losses).mean().item()
            losses.clear()
            state["losses"].append([step, round(mean_loss, 5)])
            rate = (step - window_step) / max(now - window_t, 1e-9)
            eta = min((args.steps - step) / max(rate, 1e-9), max(deadline - now, 0.0))
            log(f"step {step} loss {mean_loss:.4f} lr {lr:.2e} {rate:.2f} it/s {rate * args.batch:.0f} img/s "
                f"data {refresh_s / max(now - window_t, 1e-9):.0%} elapsed {now - t_start:.0f} s eta {eta:.0f} s")
            window_t, window_step, refresh_s = now, step, 0.0
        if time.monotonic() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.monotonic()
            log(f"checkpoint at step {step} -> {ckpt_path}")

    checkpoint()
    train_seconds = seconds_before + time.monotonic() - loop_start
    info = run_info()
    log(f"done: {step} steps in {train_seconds / 60:.1f} min of training; EMA weights (fp16) exported to {args.out} "
        f"in {time.monotonic() - t_start:.0f} s total")
    (args.work / "train_log.json").write_text(json.dumps({**info, "losses": state["losses"]}) + "\n")
    return info


if __name__ == "__main__":
    main()
