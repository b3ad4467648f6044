"""A small API for scripts, e.g. `blender --background --python make_teapot.py`:

    from bl_ext.user_default.prolific_dreamer import api
    teapots = api.generate("a ceramic teapot", preset="draft", variations=2)
"""
from __future__ import annotations

from typing import Any

import bpy

from . import jobs


class GenerationError(RuntimeError):
    """The job failed or was cancelled; `code` is the protocol's error code, str() the backend's sentence."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def submit(prompt: str, preset: str = "standard", seed: int = 0, variations: int = 1, negative_prompt: str = "",
           **overrides: Any) -> jobs.Job:
    """Queue a job and return at once; its objects appear when Blender's event loop runs (jobs.wait pumps)."""
    return jobs.submit(prompt, preset, seed, variations, overrides, negative_prompt=negative_prompt)


def resume(job_id: str, wait: bool = True, timeout: float | None = None) -> list[bpy.types.Object]:
    """Continue a stopped job (see `stopped_jobs`) from its checkpoints; like `generate` otherwise."""
    try:
        job = jobs.resume(job_id)
    except ValueError as err:
        raise GenerationError("not_resumable", str(err)) from None
    return _finish(job, wait, timeout)


def stopped_jobs() -> list[jobs.Job]:
    """Jobs that ended without a result and can be resumed (also those a closed Blender interrupted)."""
    return [job for job in jobs.QUEUE.jobs if job.resumable]


def generate(prompt: str, preset: str = "standard", seed: int = 0, variations: int = 1, negative_prompt: str = "",
             wait: bool = True, timeout: float | None = None, **overrides: Any) -> list[bpy.types.Object]:
    """Make `variations` objects from `prompt`; with wait (the default) blocks and returns them.

    `overrides` are backend settings by section, e.g. nerf={"steps": 500}. Without wait the job runs in the
    background and the list is empty. Raises GenerationError with the backend's message when the job fails."""
    return _finish(submit(prompt, preset, seed, variations, negative_prompt, **overrides), wait, timeout)


def _finish(job: jobs.Job, wait: bool, timeout: float | None) -> list[bpy.types.Object]:
    if not wait:
        return []
    jobs.wait(job, timeout)
    if job.state != "done":
        raise GenerationError(job.code or job.state, job.message)
    return [bpy.data.objects[name] for name in job.objects]
