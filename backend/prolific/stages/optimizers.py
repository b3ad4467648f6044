"""The stages' Adam optimizers (hash-grid fields of stages 1 and 3, the DMTet of stage 2), built with the job's
kernel choice, and restoring them from checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import BadRequest


def adam(params: Any, fused: bool, **hyper) -> torch.optim.Adam:
    """Adam over `params` (tensors or param groups); `fused` runs each step as one CUDA kernel (prior.speed's
    fused-adam, chosen by the stage from StageContext.fused_adam: the parameters must all be on CUDA)."""
    return torch.optim.Adam(params, fused=True if fused else None, **hyper)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, path: Path) -> None:
    """Restore an optimizer's moments and step counts from a checkpoint, keeping the kernel it was built with (a
    checkpoint of a job with other speed options stores another), with a sentence naming the file when its
    layout differs (a checkpoint written by an older version, whose parameter groups were different)."""
    kernels = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except ValueError as err:
        raise BadRequest(f"The checkpoint {path} was written by an older version of the backend ({err}): "
                         "start again in a new output folder.") from None
    for group, (fused, foreach) in zip(optimizer.param_groups, kernels):
        group["fused"], group["foreach"] = fused, foreach
        for p in group["params"]:
            saved = optimizer.state.get(p, {})
            if torch.is_tensor(saved.get("step")):  # fused Adam reads step counts on the device, plain on the CPU
                saved["step"] = saved["step"].to(p.device if fused else "cpu", torch.float32)


def field_optimizer(field: torch.nn.Module, background: Any, lr: float, mlp_lr: float,
                    background_lr: float, fused: bool = False) -> torch.optim.Adam:
    """Adam over a hash-grid field's table (lr), its MLP (mlp_lr) and the background when it is trained (a
    module; background_lr), with a tiny eps as Instant-NGP uses for hash tables (rarely touched entries still
    move) and the betas of both references."""
    groups = [{"params": list(field.encoding.parameters()), "lr": lr},
              {"params": list(field.mlp.parameters()), "lr": mlp_lr}]
    if isinstance(background, torch.nn.Module):
        groups.append({"params": list(background.parameters()), "lr": background_lr})
    return adam([g for g in groups if g["params"]], fused, betas=(0.9, 0.99), eps=1e-15)
