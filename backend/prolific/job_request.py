"""A job request (the CLI's flags or a protocol `generate` request) as a validated JobConfig: the one translation
of flat request fields into make_config's nested overrides, and the preset a request without one gets."""
from __future__ import annotations

import copy
from typing import Any, Callable

from .config import JobConfig, default_preset, make_config, moved_settings
from .device import pick_device
from .errors import BadRequest, NoGpu

# Flat request fields and the setting each sets: (section, key), section None for the job's own fields.
FLAT_FIELDS: dict[str, tuple[str | None, str]] = {
    "model": ("prior", "model"), "guidance": ("prior", "guidance"), "negative_prompt": ("prior", "negative_prompt"),
    "seed": (None, "seed"), "particles": (None, "particles"),
    "gpus": (None, "gpus"), "stages": (None, "stages"), "device": (None, "device"),
    "formats": ("export", "formats"),
    "steps_nerf": ("nerf", "steps"), "steps_geometry": ("geometry", "steps"), "steps_texture": ("texture", "steps"),
}


def request_overrides(given: dict[str, Any], nested: dict[str, Any] | None = None,
                      defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """make_config's overrides: `nested` (sections such as {"nerf": {"steps": 10}}) with the flat fields `given`
    (FLAT_FIELDS names) on top; a field of `defaults` (e.g. the server's --model) counts only where neither sets
    its setting."""
    over = copy.deepcopy(nested or {})
    for name, value in {**(defaults or {}), **given}.items():
        section, key = FLAT_FIELDS[name]
        node = over if section is None else over.setdefault(section, {})
        if not isinstance(node, dict):
            raise BadRequest(f"Setting '{section}' must be an object of its fields.")
        if name in given or key not in node:
            node[key] = value
    return over


def job_config(prompt: str, preset: str | None, overrides: dict[str, Any],
               warn: Callable[[str], None]) -> tuple[JobConfig, bool]:
    """The job's config and whether its preset was chosen here: without one, the preset that fits the device and
    the model (config.default_preset). `warn` gets a sentence per setting given under its old section."""
    overrides = moved_settings(overrides, warn)
    cfg = make_config(prompt, "standard" if preset is None else preset, overrides)
    if preset is None:
        cfg = make_config(prompt, default_preset(pick_device(cfg.device).type, cfg.prior.model is None), overrides)
    check_gpus(cfg)
    return cfg, preset is None


def check_gpus(cfg: JobConfig) -> None:
    """On CUDA a job over several processes needs a GPU for each (rank r runs on cuda:r)."""
    if cfg.gpus == 1:
        return
    device = pick_device(cfg.device)
    if device.type != "cuda":
        return
    if cfg.device not in ("auto", "cuda"):
        raise BadRequest(f"With gpus {cfg.gpus} the device must be auto or cuda (process r runs on cuda:r), "
                         f"not {cfg.device}.")
    import torch

    if cfg.gpus > torch.cuda.device_count():
        raise NoGpu(f"gpus {cfg.gpus} was asked for but this machine has only {torch.cuda.device_count()} "
                    "CUDA GPU(s).")
