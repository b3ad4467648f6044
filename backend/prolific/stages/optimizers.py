"""The Adam optimizers of the hash-grid fields (stages 1 and 3) and restoring optimizers from checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import BadRequest


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, path: Path) -> None:
    """Restore an optimizer from a checkpoint, with a sentence naming the file when its layout differs (a
    checkpoint written by an older version, whose parameter groups were different)."""
    try:
        optimizer.load_state_dict(state)
    except ValueError as err:
        raise BadRequest(f"The checkpoint {path} was written by an older version of the backend ({err}): "
                         "start again in a new output folder.") from None


def field_optimizer(field: torch.nn.Module, background: Any, lr: float, mlp_lr: float,
                    background_lr: float) -> torch.optim.Optimizer:
    """Adam over a hash-grid field's table (lr), its MLP (mlp_lr) and the background when it is trained (a
    module; background_lr), with a tiny eps as Instant-NGP uses for hash tables (rarely touched entries still
    move) and the betas of both references."""
    groups = [{"params": list(field.encoding.parameters()), "lr": lr},
              {"params": list(field.mlp.parameters()), "lr": mlp_lr}]
    if isinstance(background, torch.nn.Module):
        groups.append({"params": list(background.parameters()), "lr": background_lr})
    return torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.99), eps=1e-15)
