"""How the renderers light a surface point: one directional light with an ambient term, the same in the volume
renderer (stage 1's lambertian and textureless renders) and the mesh renderer (lit previews and turntables)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Stage 1's render modes: albedo (unlit colour), lambertian (colour lit), textureless (white lit).
SHADINGS = ("albedo", "lambertian", "textureless")


@dataclass(frozen=True)
class Light:
    """light = ambient + diffuse · max(0, n·l) for unit normals n and a unit direction l toward the light."""
    ambient: float
    diffuse: float

    def intensity(self, normals: torch.Tensor, light_dir: torch.Tensor) -> torch.Tensor:
        """[..., 1] from normals [..., 3] and light directions broadcastable to them."""
        return self.ambient + self.diffuse * (normals * light_dir).sum(-1, keepdim=True).clamp_min(0.0)

    def shade(self, albedo: torch.Tensor, normals: torch.Tensor, light_dir: torch.Tensor, shading: str) -> torch.Tensor:
        """The colour of points of `albedo` [..., 3] under `shading` (one of SHADINGS)."""
        if shading == "albedo":
            return albedo
        lit = self.intensity(normals, light_dir)
        return lit * (albedo if shading == "lambertian" else torch.ones_like(albedo))


# threestudio's DiffuseWithPointLightMaterial: ambient 0.1, diffuse 0.9 (the mesh renderer's 0.3 / 0.7 before
# issue 14 made exported turntables a little brighter on the side away from the light).
LIGHT = Light(ambient=0.1, diffuse=0.9)
