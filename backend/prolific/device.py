"""Which torch device and dtype a job runs on, and how the device is named to the user."""
from __future__ import annotations

import torch

from .errors import BadRequest, NoGpu
from .speed_options import SpeedOptions, already_told

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    """auto → the first GPU when there is one, else the CPU; asking for cuda without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise BadRequest(f"Unknown device '{name}': use auto, cpu or cuda[:N].") from None
        if not torch.cuda.is_available():
            raise NoGpu(f"Device '{name}' was asked for but this machine has no usable CUDA GPU; "
                        "use --device cpu (slow) or auto.")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise NoGpu(f"Device '{name}' was asked for but this machine has only "
                        f"{torch.cuda.device_count()} CUDA GPU(s).")
        return torch.device("cuda", index)
    raise BadRequest(f"Unknown device '{name}': use auto, cpu or cuda[:N].")


def pick_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """auto: fp16 on a GPU (threestudio's half-precision weights: finer than bf16 where CFG amplifies rounding),
    fp32 on the CPU (half precision is slow there)."""
    if name != "auto":
        if name not in _DTYPES:
            raise BadRequest(f"Unknown dtype '{name}': use auto, fp32, fp16 or bf16.")
        return _DTYPES[name]
    return torch.float16 if device.type == "cuda" else torch.float32


def job_dtype(device: torch.device, dtype: str, speed: str) -> torch.dtype:
    """The dtype a job's prior is loaded in: prior.dtype, where `auto` becomes bf16 on a GPU when prior.speed
    asks for bf16 (config validation refuses bf16 with another explicit dtype)."""
    wants_bf16 = speed != "auto" and SpeedOptions.parse(speed, already_told).bf16
    if dtype == "auto" and wants_bf16 and device.type == "cuda":
        return torch.bfloat16
    return pick_dtype(device, dtype)


def device_description(device: torch.device | None = None) -> str:
    """'cuda:0 NVIDIA H100 80GB HBM3' or 'cpu', as shown in the protocol's hello."""
    device = device or pick_device("auto")
    if device.type == "cuda":
        index = 0 if device.index is None else device.index
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return str(device)
