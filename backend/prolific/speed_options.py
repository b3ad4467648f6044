"""The speed switches a job or the bench asks for (`prior.speed`, `prolific bench --opt`), parsed without torch so
that config.py can check them; prior/speed.py applies them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import BadRequest

COMPILE_MODES = {
    "compile": "default",
    "compile-max": "max-autotune-no-cudagraphs",
    "cudagraphs": "reduce-overhead",
}


@dataclass
class SpeedOptions:
    bf16: bool = False  # bf16 weights and activations (fp16 when off, on a GPU; fp32 on a CPU)
    tf32: bool = False  # TF32 tensor cores for fp32 matmuls/convs (the NeRF MLPs, fp32 parts of the loss)
    sdpa: bool = True  # scaled_dot_product_attention (flash) processors on every attention layer
    channels_last: bool = False  # NHWC memory format for the UNet and VAE convolutions
    compile: str | None = None  # torch.compile mode of the UNet and VAE encoder (COMPILE_MODES values)
    batch: bool = False  # CFG pair + LoRA branch in one masked UNet call
    fused_adam: bool = False  # fused (single-kernel) Adam for LoRA and NeRF optimizers on CUDA
    # Renderer side, applied where the NeRF is built (the bench, stage 1), not by `accelerate`:
    occupancy: bool = False  # occupancy-grid empty-space skipping while ray marching
    tcnn: bool = False  # tiny-cuda-nn's fused hash grid when importable (else the PyTorch one)

    @classmethod
    def parse(cls, text: str) -> "SpeedOptions":
        """"bf16,tf32,compile,batch" → options; "none" = plain eager; "best" = everything that should help
        on a GPU. Compile names: compile (default mode), compile-max (max-autotune without CUDA graphs),
        cudagraphs (reduce-overhead: compile plus CUDA graphs)."""
        opts = cls(sdpa=False)
        flags = {f.name.replace("_", "-"): f.name for f in fields(cls) if f.name != "compile"}
        for item in (s.strip().replace("_", "-") for s in text.split(",")):
            if not item or item == "none":
                continue
            if item == "best":
                opts = best_options()
            elif item in COMPILE_MODES:
                opts.compile = COMPILE_MODES[item]
            elif item in flags:
                setattr(opts, flags[item], True)
            else:
                known = sorted(flags) + sorted(COMPILE_MODES) + ["best", "none"]
                raise BadRequest(f"Unknown speed option '{item}'. Known: {', '.join(known)}.")
        return opts

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        names = [f.name.replace("_", "-") for f in fields(self) if f.name != "compile" and getattr(self, f.name)]
        if self.compile:
            names.append(next(k for k, v in COMPILE_MODES.items() if v == self.compile))
        return ",".join(names) or "none"


def best_options() -> SpeedOptions:
    return SpeedOptions(bf16=True, tf32=True, sdpa=True, channels_last=True, compile="reduce-overhead",
                        batch=True, fused_adam=True, occupancy=True, tcnn=True)
