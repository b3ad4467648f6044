"""Errors a user can act on. Each carries a protocol error code (DESIGN.md) and a human sentence."""
from __future__ import annotations


class ProlificError(Exception):
    """Base class: `code` is the protocol error code, `str(err)` the sentence shown to the user."""

    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(ProlificError):
    code = "bad_request"


class ModelNotFound(ProlificError):
    code = "model_not_found"


class OutOfMemory(ProlificError):
    code = "out_of_memory"


class NoGpu(ProlificError):
    code = "no_gpu"


class Cancelled(ProlificError):
    code = "cancelled"
