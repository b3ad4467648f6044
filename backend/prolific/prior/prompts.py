"""The prompt's view-dependent suffixes and which one a camera gets (DreamFusion's view prompts, used by both
references): the pretrained branch sees "<prompt>, <direction> view" for the camera's sector."""
from __future__ import annotations

from dataclasses import dataclass

VIEW_SUFFIXES = {
    "front": ", front view",
    "side": ", side view",
    "back": ", back view",
    "overhead": ", overhead view",
}


@dataclass(frozen=True)
class ViewSectors:
    """"overhead" above `overhead_elevation_deg`, else "front" within ±front_half_width_deg of azimuth 0, "back"
    within ±back_half_width_deg of azimuth 180, "side" between (render/cameras.py's angles)."""
    front_half_width_deg: float
    back_half_width_deg: float
    overhead_elevation_deg: float

    @classmethod
    def of(cls, prior_cfg) -> "ViewSectors":
        """The sectors of a PriorConfig."""
        return cls(prior_cfg.front_half_width_deg, prior_cfg.back_half_width_deg, prior_cfg.overhead_elevation_deg)

    def direction(self, elevation_deg: float, azimuth_deg: float) -> str:
        if elevation_deg > self.overhead_elevation_deg:
            return "overhead"
        az = (azimuth_deg + 180.0) % 360.0 - 180.0
        if abs(az) < self.front_half_width_deg:
            return "front"
        if abs(az) > 180.0 - self.back_half_width_deg:
            return "back"
        return "side"

    def directions(self, cameras) -> list[str]:
        """The direction of each camera of a render/cameras.Cameras batch."""
        angles = zip(cameras.elevation.tolist(), cameras.azimuth.tolist())
        return [self.direction(float(e), float(a)) for e, a in angles]


def view_prompts(prompt: str, view_dependent: bool = True) -> dict[str, str]:
    """The text the pretrained branch gets for each direction (the bare prompt for all when not view_dependent)."""
    return {d: prompt + suffix if view_dependent else prompt for d, suffix in VIEW_SUFFIXES.items()}
