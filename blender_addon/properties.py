"""Per-scene generation settings (saved with the .blend). The job queue itself is runtime state in jobs.py."""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import presets

def preset_items(self, context):
    """The preset menu (presets.menu_items); kept referenced, as Blender needs of a dynamic enum's strings."""
    _items[:] = presets.menu_items()
    return _items


_items: list = []
GUIDANCES = [
    ("vsd", "VSD", "Variational Score Distillation (ProlificDreamer): sharper, more varied"),
    ("sds", "SDS", "Score Distillation Sampling (DreamFusion): the classic, needs high guidance"),
]


class ProlificSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to make, e.g. 'a ceramic teapot'")
    negative_prompt: StringProperty(name="Negative", description="What the images should not look like")
    preset: EnumProperty(name="Preset", items=preset_items, default=presets.number(presets.DEFAULT),
                         description="The backend's settings for steps and resolutions")
    seed: IntProperty(name="Seed", min=0, default=0, description="Same prompt, settings and seed give the same object")
    variations: IntProperty(name="Variations", min=1, max=16, default=1,
                            description="Number of different objects for the prompt (VSD particles)")
    use_advanced: BoolProperty(name="Override preset", default=False,
                               description="Send the advanced settings below instead of the preset's")
    guidance: EnumProperty(name="Guidance", items=GUIDANCES, default="vsd")
    guidance_scale: FloatProperty(name="Guidance scale", min=0.0, max=200.0, default=7.5,
                                  description="Classifier-free guidance of the NeRF and texture stages (VSD: 7.5; "
                                              "SDS: 100)")
    geometry_guidance_scale: FloatProperty(name="Geometry guidance", min=0.0, max=200.0, default=100.0,
                                           description="Classifier-free guidance of the geometry stage's SDS on "
                                                       "normal maps (the paper: 100)")
    nerf_steps: IntProperty(name="NeRF steps", min=0, default=5000, description="Stage 1 (NeRF with VSD) steps")
    geometry_steps: IntProperty(name="Geometry steps", min=0, default=2000, description="Stage 2 (mesh) steps")
    texture_steps: IntProperty(name="Texture steps", min=0, default=3000, description="Stage 3 (texture) steps")
    texture_size: IntProperty(name="Texture size", min=16, max=8192, default=1024, subtype="PIXEL",
                              description="Width and height of the baked albedo texture")

    def overrides(self) -> dict:
        """The nested config overrides (backend config.py sections) that the advanced settings ask for."""
        out: dict = {}
        if self.use_advanced:
            scale_key = "guidance_scale" if self.guidance == "vsd" else "sds_guidance_scale"
            out["prior"] = {"guidance": self.guidance, scale_key: self.guidance_scale}
            out["nerf"] = {"steps": self.nerf_steps}
            out["geometry"] = {"steps": self.geometry_steps, "guidance_scale": self.geometry_guidance_scale}
            out["texture"] = {"steps": self.texture_steps, "guidance": self.guidance}
            out["export"] = {"texture_size": self.texture_size}
        return out


def register() -> None:
    bpy.utils.register_class(ProlificSettings)
    bpy.types.Scene.prolific = PointerProperty(type=ProlificSettings)


def unregister() -> None:
    del bpy.types.Scene.prolific
    bpy.utils.unregister_class(ProlificSettings)
