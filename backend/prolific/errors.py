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


class JobExists(BadRequest):
    """A new (not resumed) job would replace the checkpoints in `job_dir`; nothing was changed."""

    def __init__(self, job_dir, stages: list[str]):
        super().__init__(f"{job_dir} already holds a job (checkpoints of {', '.join(stages)}); nothing was changed. "
                         "Resume it, or give the new job another name.")
        self.job_dir = job_dir
        self.stages = stages


class Cancelled(ProlificError):
    """The job stopped at a step boundary; `stage` and `step` name the last finished step when there was one."""

    code = "cancelled"

    def __init__(self, message: str, stage: str | None = None, step: int | None = None, total: int | None = None):
        super().__init__(message)
        self.stage, self.step, self.total = stage, step, total
