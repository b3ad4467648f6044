"""Per-scene generation settings (saved with the .blend). The job queue itself is runtime state in jobs.py."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

# Identifiers are the backend's preset names (config.PRESETS).
PRESETS = [
    ("draft", "Draft", "Fast preview quality: fewer steps, 256 px renders, 512 px texture"),
    ("standard", "Standard", "Balanced quality and time"),
    ("high", "High", "More steps and a 2048 px texture"),
    ("paper", "Paper", "The paper's full settings (hours on a large GPU)"),
    ("test", "Test", "A tiny run that only checks the setup works (seconds, any device)"),
]
GUIDANCES = [
    ("vsd", "VSD", "Variational Score Distillation (ProlificDreamer): sharper, more varied"),
    ("sds", "SDS", "Score Distillation Sampling (DreamFusion): the classic, needs high guidance"),
]


class ProlificSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to make, e.g. 'a ceramic teapot'")
    negative_prompt: StringProperty(name="Negative", description="What the images should not look like")
    preset: EnumProperty(name="Preset", items=PRESETS, default="standard")
    seed: IntProperty(name="Seed", min=0, default=0, description="Same prompt, settings and seed give the same object")
    variations: IntProperty(name="Variations", min=1, max=16, default=1,
                            description="Number of different objects for the prompt (VSD particles)")
    use_advanced: BoolProperty(name="Override preset", default=False,
                               description="Send the advanced settings below instead of the preset's")
    guidance: EnumProperty(name="Guidance", items=GUIDANCES, default="vsd")
    guidance_scale: FloatProperty(name="Guidance scale", min=0.0, max=200.0, default=7.5,
                                  description="Classifier-free guidance (VSD: 7.5; SDS: 100)")
    nerf_steps: IntProperty(name="NeRF steps", min=0, default=5000, description="Stage 1 (NeRF with VSD) steps")
    geometry_steps: IntProperty(name="Geometry steps", min=0, default=2000, description="Stage 2 (mesh) steps")
    texture_steps: IntProperty(name="Texture steps", min=0, default=3000, description="Stage 3 (texture) steps")
    texture_size: IntProperty(name="Texture size", min=16, max=8192, default=1024, subtype="PIXEL",
                              description="Width and height of the baked albedo texture")

    def overrides(self) -> dict:
        """The nested config overrides (backend config.py sections) that these settings ask for."""
        out: dict = {}
        if self.negative_prompt.strip():
            out["prior"] = {"negative_prompt": self.negative_prompt}
        if self.use_advanced:
            scale_key = "guidance_scale" if self.guidance == "vsd" else "sds_guidance_scale"
            out.setdefault("prior", {}).update({"guidance": self.guidance, scale_key: self.guidance_scale})
            out["nerf"] = {"steps": self.nerf_steps}
            out["geometry"] = {"steps": self.geometry_steps}
            out["texture"] = {"steps": self.texture_steps, "guidance": self.guidance}
            out["export"] = {"texture_size": self.texture_size}
        return out


def register() -> None:
    bpy.utils.register_class(ProlificSettings)
    bpy.types.Scene.prolific = PointerProperty(type=ProlificSettings)


def unregister() -> None:
    del bpy.types.Scene.prolific
    bpy.utils.unregister_class(ProlificSettings)
