"""Cameras on a sphere around the object: sampling for training, turntables for previews, rays, clip matrices.

World: +Z up, right-handed (Blender). Camera space: OpenGL (looks down -Z, +Y up, +X right); c2w columns are
(right, up, back, position).

Angles: azimuth 0 puts the camera on the -Y axis looking toward +Y (Blender's front view, numpad 1); azimuth
grows counter-clockwise seen from above, so azimuth 90 is the camera on +X (Blender's right view, numpad 3).
Elevation is the angle above the XY plane. Azimuths are kept in [-180, 180).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import CameraConfig


def wrap_azimuth(azimuth_deg: torch.Tensor) -> torch.Tensor:
    """Azimuth in degrees wrapped into [-180, 180)."""
    return torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0


@dataclass
class Cameras:
    """A batch of B pinhole cameras looking at the origin. Square or not, fov_y is the vertical field of view."""

    c2w: torch.Tensor  # [B,4,4]
    fov_y: torch.Tensor  # [B] radians
    elevation: torch.Tensor  # [B] degrees
    azimuth: torch.Tensor  # [B] degrees in [-180, 180)
    distance: torch.Tensor  # [B]

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> "Cameras":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(self.c2w[index], self.fov_y[index], self.elevation[index], self.azimuth[index],
                       self.distance[index])

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> torch.Tensor:
        """Camera centres in world space [B,3]."""
        return self.c2w[:, :3, 3]

    def to(self, device) -> "Cameras":
        return Cameras(self.c2w.to(device), self.fov_y.to(device), self.elevation.to(device),
                       self.azimuth.to(device), self.distance.to(device))

    def nearer(self, factor: torch.Tensor | float) -> "Cameras":
        """The same cameras at distance / factor ([B] or a number): each sees the scene grown by it about the origin."""
        factor = torch.as_tensor(factor, dtype=self.c2w.dtype, device=self.device).expand(len(self))
        c2w = self.c2w.clone()
        c2w[:, :3, 3] /= factor[:, None]
        return Cameras(c2w, self.fov_y, self.elevation, self.azimuth, self.distance / factor)

    def rays(self, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space rays through pixel centres: origins [B,H,W,3], unit directions [B,H,W,3].

        Row 0 is the top of the image, column 0 its left (the usual image layout, as saved to PNG)."""
        device, dtype = self.c2w.device, self.c2w.dtype
        tan_y = torch.tan(self.fov_y.to(dtype) / 2)  # [B]
        tan_x = tan_y * (W / H)
        xs = (torch.arange(W, device=device, dtype=dtype) + 0.5) / W * 2 - 1
        ys = 1 - (torch.arange(H, device=device, dtype=dtype) + 0.5) / H * 2
        y, x = torch.meshgrid(ys, xs, indexing="ij")  # [H,W]
        cam = torch.stack([
            x[None] * tan_x[:, None, None],
            y[None] * tan_y[:, None, None],
            -torch.ones_like(x)[None].expand(len(self), H, W),
        ], dim=-1)  # [B,H,W,3]
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.position[:, None, None, :].expand_as(dirs)
        return origins, dirs

    def w2c(self) -> torch.Tensor:
        """World-to-camera matrices [B,4,4] (the inverse of the rigid c2w)."""
        rot_t = self.c2w[:, :3, :3].transpose(1, 2)
        out = torch.zeros_like(self.c2w)
        out[:, :3, :3] = rot_t
        out[:, :3, 3] = -(rot_t @ self.c2w[:, :3, 3:4])[..., 0]
        out[:, 3, 3] = 1
        return out

    def projection(self, near: float, far: float, aspect: float = 1.0) -> torch.Tensor:
        """OpenGL perspective matrices [B,4,4]; aspect = W / H."""
        f = 1.0 / torch.tan(self.fov_y / 2)
        proj = torch.zeros(len(self), 4, 4, device=self.c2w.device, dtype=self.c2w.dtype)
        proj[:, 0, 0] = f / aspect
        proj[:, 1, 1] = f
        proj[:, 2, 2] = (far + near) / (near - far)
        proj[:, 2, 3] = 2 * far * near / (near - far)
        proj[:, 3, 2] = -1
        return proj

    def mvp(self, near: float, far: float, aspect: float = 1.0) -> torch.Tensor:
        """World → OpenGL clip space [B,4,4]: after the divide by w, x right and y UP in [-1,1], so clip y=+1 is
        image row 0 of `rays`. (nvdiffrast's rast row 0 is y=-1: flip its rows to match renders.)"""
        return self.projection(near, far, aspect) @ self.w2c()


def cameras_from_angles(elevation_deg: torch.Tensor, azimuth_deg: torch.Tensor, distance: torch.Tensor,
                        fov_deg: torch.Tensor) -> Cameras:
    """Cameras at the given spherical positions ([B] tensors, degrees) looking at the origin, world +Z up."""
    el = torch.deg2rad(elevation_deg)
    azimuth_deg = wrap_azimuth(azimuth_deg)
    az = torch.deg2rad(azimuth_deg)
    back = torch.stack([torch.cos(el) * torch.sin(az), -torch.cos(el) * torch.cos(az), torch.sin(el)], dim=-1)
    position = distance[:, None] * back
    # Right follows from azimuth alone, so the frame stays well defined straight above or below the object.
    right = torch.stack([torch.cos(az), torch.sin(az), torch.zeros_like(az)], dim=-1)
    up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(len(el), 4, 4, device=el.device, dtype=el.dtype)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1
    return Cameras(c2w, torch.deg2rad(fov_deg), elevation_deg, azimuth_deg, distance)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator,
                                       device=generator.device if generator is not None else "cpu")


def sample_cameras(n: int, cfg: CameraConfig, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Cameras:
    """n random training cameras: elevation, distance and fov uniform in cfg's ranges, azimuth uniform in [-180,180).

    Reproducible for a given generator (drawn on the generator's device, then moved to `device`)."""
    elevation = _uniform(n, *cfg.elevation_deg, generator)
    azimuth = _uniform(n, -180.0, 180.0, generator)
    distance = _uniform(n, *cfg.camera_distance, generator)
    fov = _uniform(n, *cfg.fov_deg, generator)
    return cameras_from_angles(elevation, azimuth, distance, fov).to(device)


def orbit_cameras(n: int, elevation_deg: float = 15.0, distance: float = 2.0, fov_deg: float = 50.0,
                  device: torch.device | str = "cpu") -> Cameras:
    """A turntable of n cameras, starting at the front (azimuth 0) and turning counter-clockwise seen from above."""
    azimuth = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    full = torch.full((n,), 1.0)
    return cameras_from_angles(full * elevation_deg, azimuth, full * distance, full * fov_deg).to(device)


def turntable_cameras(n: int, cfg: CameraConfig, device: torch.device | str = "cpu") -> Cameras:
    """The turntable of previews and exports: n views at 15° elevation from the middle of the training cameras'
    distance and field of view, so an object is framed as stage 1 saw it."""
    return orbit_cameras(n, 15.0, sum(cfg.camera_distance) / 2, sum(cfg.fov_deg) / 2, device)


def sample_light_dirs(cameras: Cameras, generator: torch.Generator | None = None,
                      spread: float = 0.5) -> torch.Tensor:
    """Unit directions toward a light near each camera [B,3]: the camera direction plus Gaussian noise of std
    `spread`, so shading varies during training while the lit side stays the side the camera sees."""
    back = cameras.position / cameras.position.norm(dim=-1, keepdim=True)
    noise = torch.randn(len(cameras), 3, generator=generator,
                        device=generator.device if generator is not None else "cpu").to(back)
    light = back + spread * noise
    return light / light.norm(dim=-1, keepdim=True).clamp_min(1e-8)
