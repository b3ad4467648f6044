"""The sidebar tab "Prolific" in the 3D viewport: settings, Generate, the running job, the queue."""
from __future__ import annotations

import os

import bpy
import bpy.utils.previews

from . import jobs

STATE_ICONS = {"starting": "TIME", "queued": "TIME", "running": "PLAY", "importing": "IMPORT", "done": "CHECKMARK",
               "error": "ERROR", "cancelled": "CANCEL", "interrupted": "PAUSE"}
_previews = None  # bpy.utils.previews collection holding the running job's latest preview image


def format_eta(seconds) -> str:
    if seconds is None:
        return "estimating..."
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def load_preview(path: str):
    """The preview PNG as an ImagePreview (a rewritten file, with a new mtime, is loaded again); None if absent."""
    if _previews is None or not path or not os.path.isfile(path):
        return None
    key = f"{path}:{os.stat(path).st_mtime_ns}"
    if key not in _previews:
        _previews.clear()
        _previews.load(key, path, "IMAGE")
    return _previews[key]


class ProlificPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Prolific"


class PROLIFIC_PT_main(ProlificPanel, bpy.types.Panel):
    bl_idname = "PROLIFIC_PT_main"
    bl_label = "Prolific Dreamer"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.prolific
        col = layout.column()
        col.prop(settings, "prompt", text="", icon="TEXT")
        col.prop(settings, "negative_prompt")
        col.prop(settings, "preset")
        row = col.row(align=True)
        row.prop(settings, "seed")
        row.prop(settings, "variations")
        layout.operator("prolific.generate", text="Generate", icon="PLAY")
        if jobs.backend_status["state"] in ("starting", "error"):
            layout.label(text=jobs.backend_status["text"],
                         icon="ERROR" if jobs.backend_status["state"] == "error" else "TIME")
        job = jobs.QUEUE.active()
        if job is not None:
            draw_job(layout.box(), job)


def draw_job(layout, job: jobs.Job) -> None:
    layout.label(text=job.prompt, icon=STATE_ICONS.get(job.state, "INFO"))
    for warning in job.warnings:
        layout.label(text=warning, icon="ERROR")
    if job.state == "running":
        layout.label(text=f"Stage: {job.stage} ({job.step}/{job.total})")
        layout.progress(factor=job.fraction, type="BAR", text=f"{job.stage} {int(job.fraction * 100)}%")
        layout.label(text=f"ETA {format_eta(job.eta_s)}")
        preview = load_preview(job.preview)
        if preview is not None:
            layout.template_icon(icon_value=preview.icon_id, scale=8.0)
    else:
        layout.label(text={"starting": "Starting the backend...", "queued": "Waiting in the queue...",
                           "importing": "Importing..."}.get(job.state, job.message))
    layout.operator("prolific.cancel", text="Cancel", icon="CANCEL").job_id = job.id


class PROLIFIC_PT_advanced(ProlificPanel, bpy.types.Panel):
    bl_idname = "PROLIFIC_PT_advanced"
    bl_label = "Advanced"
    bl_parent_id = "PROLIFIC_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_header(self, context):
        self.layout.prop(context.scene.prolific, "use_advanced", text="")

    def draw(self, context):
        settings = context.scene.prolific
        col = self.layout.column()
        col.active = settings.use_advanced
        col.prop(settings, "guidance")
        col.prop(settings, "guidance_scale")
        col.prop(settings, "geometry_guidance_scale")
        col.prop(settings, "nerf_steps")
        col.prop(settings, "geometry_steps")
        col.prop(settings, "texture_steps")
        col.prop(settings, "texture_size")


class PROLIFIC_PT_queue(ProlificPanel, bpy.types.Panel):
    bl_idname = "PROLIFIC_PT_queue"
    bl_label = "Queue"
    bl_parent_id = "PROLIFIC_PT_main"

    def draw(self, context):
        layout = self.layout
        if not jobs.QUEUE.jobs:
            layout.label(text="No jobs yet.")
            return
        for job in jobs.QUEUE.jobs:
            row = layout.row(align=True)
            detail = f"{job.stage} {job.step}/{job.total}" if job.state == "running" else job.state
            row.label(text=f"{job.prompt} — {detail}", icon=STATE_ICONS.get(job.state, "INFO"))
            if job.resumable:
                row.operator("prolific.resume", text="", icon="RECOVER_LAST").job_id = job.id
            if not job.finished:
                row.operator("prolific.cancel", text="", icon="X").job_id = job.id
            elif job.state in ("error", "interrupted"):
                layout.label(text=job.message + (" Resume continues from its last checkpoint." if job.resumable
                                                 else ""))
        if any(job.finished for job in jobs.QUEUE.jobs):
            layout.operator("prolific.clear_finished", icon="TRASH")


class PROLIFIC_PT_tools(ProlificPanel, bpy.types.Panel):
    bl_idname = "PROLIFIC_PT_tools"
    bl_label = "Tools"
    bl_parent_id = "PROLIFIC_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        self.layout.operator("prolific.unwrap_xatlas", icon="UV")


CLASSES = (PROLIFIC_PT_main, PROLIFIC_PT_advanced, PROLIFIC_PT_queue, PROLIFIC_PT_tools)


def register() -> None:
    global _previews
    _previews = bpy.utils.previews.new()
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    global _previews
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
    if _previews is not None:
        bpy.utils.previews.remove(_previews)
        _previews = None
