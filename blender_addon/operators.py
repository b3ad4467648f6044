"""Operators: generate, cancel, resume, check and set up the backend, clear the queue, unwrap with xatlas."""
from __future__ import annotations

import json
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from . import jobs
from .client import BackendError
from .properties import preset_items

SETTING_NAMES = ("prompt", "negative_prompt", "preset", "seed", "variations")


class PROLIFIC_OT_generate(bpy.types.Operator):
    """Make 3D objects from the prompt with the backend (runs in the background; Blender stays usable)"""

    bl_idname = "prolific.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    # Unset properties come from the scene's Prolific settings (the sidebar), so scripts pass only what they need.
    prompt: StringProperty(name="Prompt", options={"SKIP_SAVE"})
    negative_prompt: StringProperty(name="Negative prompt", options={"SKIP_SAVE"})
    preset: EnumProperty(name="Preset", items=preset_items, options={"SKIP_SAVE"})
    seed: IntProperty(name="Seed", min=0, options={"SKIP_SAVE"})
    variations: IntProperty(name="Variations", min=1, max=16, default=1, options={"SKIP_SAVE"})
    overrides: StringProperty(name="Overrides", options={"SKIP_SAVE"},
                              description='Backend settings as JSON, e.g. {"nerf": {"steps": 100}}; '
                                          "replaces the sidebar's advanced settings")
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until the objects exist (scripts, --background)")
    timeout: FloatProperty(name="Timeout", min=0.0, default=0.0, options={"SKIP_SAVE"},
                           description="With Wait: give up (and cancel) after this many seconds; 0 = never")

    def execute(self, context):
        settings = context.scene.prolific
        values = {name: getattr(self, name) if self.properties.is_property_set(name) else getattr(settings, name)
                  for name in SETTING_NAMES}
        if not values["prompt"].strip():
            self.report({"ERROR"}, "Type a prompt first: what should be made?")
            return {"CANCELLED"}
        try:
            overrides = json.loads(self.overrides) if self.overrides.strip() else settings.overrides()
        except ValueError as err:
            self.report({"ERROR"}, f"Overrides are not valid JSON: {err}")
            return {"CANCELLED"}
        if not values["preset"]:
            self.report({"ERROR"}, "Choose a preset: the backend no longer has the one selected.")
            return {"CANCELLED"}
        job = jobs.submit(values["prompt"], values["preset"], values["seed"], values["variations"], overrides,
                          negative_prompt=values["negative_prompt"])
        return follow(self, job, "Queued")


def follow(op: bpy.types.Operator, job: jobs.Job, pending: str) -> set[str]:
    """The end of Generate and Resume: wait when asked, then report how the job stands."""
    if op.wait:
        jobs.wait(job, op.timeout or None)
    if job.state == "error":
        op.report({"ERROR"}, job.message)
        return {"CANCELLED"}
    if job.state == "cancelled":
        op.report({"WARNING"}, "The job was cancelled.")
        return {"CANCELLED"}
    op.report({"INFO"}, job.message if job.finished else f"{pending}: {job.prompt}")
    return {"FINISHED"}


class PROLIFIC_OT_cancel(bpy.types.Operator):
    """Stop a job; finished stages keep their checkpoints"""

    bl_idname = "prolific.cancel"
    bl_label = "Cancel"

    job_id: StringProperty(name="Job", description="Job to cancel; empty = the running one", options={"SKIP_SAVE"})

    def execute(self, context):
        job = jobs.QUEUE.get(self.job_id) if self.job_id else jobs.QUEUE.active()
        if job is None or job.finished:
            return {"CANCELLED"}
        jobs.cancel(job.id)
        return {"FINISHED"}


class PROLIFIC_OT_resume(bpy.types.Operator):
    """Continue a stopped job from its last checkpoint, with the settings it started with"""

    bl_idname = "prolific.resume"
    bl_label = "Resume"

    job_id: StringProperty(name="Job", description="The stopped job to continue", options={"SKIP_SAVE"})
    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until the objects exist (scripts, --background)")
    timeout: FloatProperty(name="Timeout", min=0.0, default=0.0, options={"SKIP_SAVE"},
                           description="With Wait: give up (and cancel) after this many seconds; 0 = never")

    def execute(self, context):
        try:
            job = jobs.resume(self.job_id)
        except ValueError as err:
            self.report({"ERROR"}, str(err))
            return {"CANCELLED"}
        return follow(self, job, "Resumed")


class PROLIFIC_OT_clear_finished(bpy.types.Operator):
    """Remove finished, failed and cancelled jobs from the list"""

    bl_idname = "prolific.clear_finished"
    bl_label = "Clear Finished"

    def execute(self, context):
        jobs.QUEUE.clear_finished()
        return {"FINISHED"}


class PROLIFIC_OT_check_backend(bpy.types.Operator):
    """Start the backend and show its version, device and model"""

    bl_idname = "prolific.check_backend"
    bl_label = "Check Backend"

    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until the backend answers (scripts, --background)")

    def execute(self, context):
        try:
            if not self.wait:
                jobs.connect()
                self.report({"INFO"}, "Starting the backend...")
                return {"FINISHED"}
            hello = jobs.client().wait_ready()
        except BackendError as err:
            jobs.backend_status.update(state="error", text=err.message)
            self.report({"ERROR"}, err.message)
            return {"CANCELLED"}
        jobs.pump(undo=False)
        self.report({"INFO"}, jobs.backend_status["text"] if hello else "The backend answered.")
        return {"FINISHED"}


class PROLIFIC_OT_setup_backend(bpy.types.Operator):
    """Create a Python environment in the add-on's user folder and install the backend package with torch"""

    bl_idname = "prolific.setup_backend"
    bl_label = "Set up Backend"

    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until set-up ends (scripts, --background)")

    def execute(self, context):
        p = jobs.prefs()
        venv = Path(bpy.utils.extension_path_user(__package__, create=True)) / "backend-venv"
        package = bpy.path.abspath(p.backend_package) if p.backend_package.startswith("//") else p.backend_package
        if not bpy.app.online_access and not Path(package).exists():
            self.report({"ERROR"}, "Set up backend downloads packages, but Blender's online access is off: allow it "
                        "in Preferences > System > Network, or install the backend yourself and choose its Python.")
            return {"CANCELLED"}
        setup = jobs.start_setup(venv, package, p.pip_args)
        if not self.wait:
            self.report({"INFO"}, f"Setting up the backend in {venv}")
            return {"FINISHED"}
        status = setup.join()
        jobs.pump(undo=False)
        if status.state != "done":
            self.report({"ERROR"}, status.message)
            return {"CANCELLED"}
        self.report({"INFO"}, status.message)
        return {"FINISHED"}


class PROLIFIC_OT_unwrap_xatlas(bpy.types.Operator):
    """Give the selected meshes a new "xatlas" UV map made by xatlas (charts packed without overlap)"""

    bl_idname = "prolific.unwrap_xatlas"
    bl_label = "Unwrap with xatlas"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return context.mode == "OBJECT" and any(o.type == "MESH" for o in context.selected_objects)

    def execute(self, context):
        try:
            import xatlas  # the wheel bundled with the extension
        except ImportError:
            self.report({"ERROR"}, "xatlas is missing: install the add-on from a zip made by build_addon.py, which "
                        "bundles it.")
            return {"CANCELLED"}
        meshes = {o.data for o in context.selected_objects if o.type == "MESH"}
        for mesh in meshes:
            unwrap_mesh(mesh, xatlas)
        self.report({"INFO"}, f"Unwrapped {len(meshes)} mesh(es).")
        return {"FINISHED"}


def unwrap_mesh(mesh: bpy.types.Mesh, xatlas) -> None:
    """xatlas works on triangles: unwrap the loop triangulation and write each corner's UV to its loop."""
    mesh.calc_loop_triangles()
    n_tris = len(mesh.loop_triangles)
    if n_tris == 0:
        return
    positions = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", positions)
    tri_verts = np.empty(n_tris * 3, dtype=np.int32)
    mesh.loop_triangles.foreach_get("vertices", tri_verts)
    tri_loops = np.empty(n_tris * 3, dtype=np.int32)
    mesh.loop_triangles.foreach_get("loops", tri_loops)
    _, indices, uvs = xatlas.parametrize(positions.reshape(-1, 3), tri_verts.reshape(-1, 3))
    loop_uv = np.zeros((len(mesh.loops), 2), dtype=np.float32)
    loop_uv[tri_loops] = uvs[indices.reshape(-1)]
    layer = mesh.uv_layers.get("xatlas") or mesh.uv_layers.new(name="xatlas")
    layer.uv.foreach_set("vector", loop_uv.ravel())
    mesh.uv_layers.active = layer


CLASSES = (PROLIFIC_OT_generate, PROLIFIC_OT_cancel, PROLIFIC_OT_resume, PROLIFIC_OT_clear_finished,
           PROLIFIC_OT_check_backend, PROLIFIC_OT_setup_backend, PROLIFIC_OT_unwrap_xatlas)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
