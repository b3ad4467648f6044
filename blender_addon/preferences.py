"""Add-on preferences: where the backend lives, which model and device it uses, where results go."""
from __future__ import annotations

import bpy
from bpy.props import EnumProperty, StringProperty

from . import installer, jobs

DEVICES = [
    ("auto", "Auto", "The GPU when there is one, else the CPU"),
    ("cuda", "GPU (CUDA)", "The first NVIDIA GPU; fails with a clear message when there is none"),
    ("cpu", "CPU", "Only for tiny models and tests: real models are far too slow on a CPU"),
]


class ProlificPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH",
        description="Python executable of an environment where the backend package (prolific) is installed")
    backend_package: StringProperty(
        name="Backend package", default=installer.DEFAULT_PACKAGE,
        description="What Set up backend installs: a package name, or a path to the backend's source folder or wheel")
    pip_args: StringProperty(
        name="Extra pip arguments",
        description="Added to pip install, e.g. an extra index for a torch build matching your CUDA version")
    model: StringProperty(
        name="Model",
        description="Hugging Face id (e.g. stabilityai/stable-diffusion-2-1-base) or a local diffusers folder; "
                    "empty uses the backend's small bundled demo model")
    device: EnumProperty(name="Device", items=DEVICES, default="auto")
    output_dir: StringProperty(
        name="Output folder", subtype="DIR_PATH",
        description="Where the backend writes results and previews; empty uses the add-on's user folder")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_python")
        row = col.row(align=True)
        row.operator("prolific.setup_backend", icon="IMPORT")
        row.operator("prolific.check_backend", icon="CHECKMARK")
        setup = jobs.setup
        if setup is not None:
            status = setup.status
            box = col.box()
            if status.state == "running":
                box.progress(factor=status.fraction, type="BAR", text=status.message)
                if status.log:
                    box.label(text=status.log[-1][:120])
            else:
                box.label(text=status.message, icon="ERROR" if status.state == "error" else "CHECKMARK")
        col.label(text=jobs.backend_status["text"],
                  icon={"ready": "CHECKMARK", "error": "ERROR", "starting": "TIME"}.get(
                      jobs.backend_status["state"], "INFO"))
        sub = col.column(heading="Set up")
        sub.prop(self, "backend_package")
        sub.prop(self, "pip_args")
        col.separator()
        col.prop(self, "model")
        col.prop(self, "device")
        col.prop(self, "output_dir")
        if not self.output_dir.strip():
            col.label(text=f"Results go to {jobs.default_output_dir()}")


def register() -> None:
    bpy.utils.register_class(ProlificPreferences)


def unregister() -> None:
    bpy.utils.unregister_class(ProlificPreferences)
