"""Sub-modules of the shared UNet/VAE replaced by a variant for the span of a job (the speed options' fast paths,
prior/speed.module_layout), and the originals put back after; nothing is changed on a live module."""
from __future__ import annotations

import contextlib
from typing import Callable

from torch import nn


@contextlib.contextmanager
def replaced(module: nn.Module, kind: type, make: Callable[[nn.Module], nn.Module]):
    """Every sub-module of `module` of exactly type `kind` replaced by `make(it)` while inside; the originals back
    after. Yields how many were replaced."""
    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, make(child))
                swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)


def view_as(cls: type, module: nn.Module) -> nn.Module:
    """`module` as an instance of its subclass `cls` (a variant with other forward code): a new object holding the
    same sub-modules, parameters, buffers, hooks and config, so whatever is injected into one is in both and the
    state_dict keys do not change."""
    new = cls.__new__(cls)
    new.__dict__.update(module.__dict__)
    return new
