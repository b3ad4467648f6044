import math

import pytest
import torch

from prolific.config import CameraConfig, make_config
from prolific.prior.prompts import ViewSectors
from prolific.render.cameras import cameras_from_angles, orbit_cameras, sample_cameras, sample_light_dirs


def _cams(elevations, azimuths, distance=2.0, fov=50.0):
    n = len(elevations)
    return cameras_from_angles(torch.tensor(elevations, dtype=torch.float32),
                               torch.tensor(azimuths, dtype=torch.float32),
                               torch.full((n,), distance), torch.full((n,), fov))


def test_c2w_is_orthonormal_right_handed_and_looks_at_origin():
    cfg = make_config("x", "test").cameras
    cams = sample_cameras(64, cfg, torch.Generator().manual_seed(0))
    rot = cams.c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3).expand(64, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(64), atol=1e-5)
    # The camera looks down its -Z: -back points from the camera to the origin.
    to_origin = -cams.position / cams.position.norm(dim=-1, keepdim=True)
    assert torch.allclose(-rot[:, :, 2], to_origin, atol=1e-5)
    assert torch.allclose(cams.position.norm(dim=-1), cams.distance, atol=1e-5)
    # Image up never points down: horizon stays horizontal (right has no Z component).
    assert torch.all(rot[:, 2, 1] > 0) and torch.allclose(rot[:, 2, 0], torch.zeros(64), atol=1e-6)


def test_sampled_ranges_follow_config_and_generator():
    cfg = make_config("x", "test").cameras
    a = sample_cameras(256, cfg, torch.Generator().manual_seed(1))
    b = sample_cameras(256, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a.c2w, b.c2w)
    lo, hi = cfg.elevation_deg
    assert a.elevation.min() >= lo and a.elevation.max() <= hi
    assert a.distance.min() >= cfg.camera_distance[0] and a.distance.max() <= cfg.camera_distance[1]
    assert math.radians(cfg.fov_deg[0]) - 1e-6 <= a.fov_y.min() and a.fov_y.max() <= math.radians(cfg.fov_deg[1]) + 1e-6
    assert a.azimuth.min() >= -180 and a.azimuth.max() < 180
    # Uniform azimuth: all four quadrants are visited.
    assert len(set((torch.div(a.azimuth + 180, 90, rounding_mode="floor")).tolist())) == 4


def test_azimuth_zero_is_blender_front_and_turns_counter_clockwise():
    cams = _cams([0.0, 0.0, 90.0], [0.0, 90.0, 0.0])
    assert torch.allclose(cams.position[0], torch.tensor([0.0, -2.0, 0.0]), atol=1e-5)
    assert torch.allclose(cams.position[1], torch.tensor([2.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(cams.c2w[0, :3, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)  # front: +X is right
    assert torch.allclose(cams.c2w[0, :3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)  # world up is image up
    assert torch.allclose(cams.position[2], torch.tensor([0.0, 0.0, 2.0]), atol=1e-5)  # straight above: valid frame
    rot = cams.c2w[2, :3, :3]
    assert torch.allclose(rot.T @ rot, torch.eye(3), atol=1e-5)


@pytest.mark.parametrize("elevation,azimuth,expected", [
    (0, 0, "front"), (10, 29, "front"), (10, -29, "front"), (0, 31, "side"), (0, -90, "side"),
    (0, 149, "side"), (0, 151, "back"), (0, -179, "back"), (0, 180, "back"), (61, 0, "overhead"),
    (89, 170, "overhead"), (59, 0, "front"), (-10, 100, "side"), (0, 360, "front"),
])
def test_view_direction_table(elevation, azimuth, expected):
    """The default sectors: front/back within ±30° (both references), overhead above 60° elevation."""
    assert ViewSectors.of(make_config("x").prior).direction(elevation, azimuth) == expected


def test_the_demo_asks_the_toy_prior_with_the_sectors_it_was_trained_on():
    from prolific.toy.dataset import CAPTION_SECTORS_DEG

    p = make_config("x", "demo").prior
    assert (p.front_half_width_deg, p.back_half_width_deg, p.overhead_elevation_deg) == CAPTION_SECTORS_DEG
    assert ViewSectors(*CAPTION_SECTORS_DEG).direction(0, 40) == "front"
    assert ViewSectors(*CAPTION_SECTORS_DEG).direction(0, 140) == "back"


def test_directions_per_camera_and_orbit_starts_at_front():
    cams = orbit_cameras(8, elevation_deg=15.0, distance=2.0, fov_deg=40.0)
    prior = make_config("x").prior
    assert ViewSectors.of(prior).directions(cams) == ["front", "side", "side", "side", "back", "side", "side", "side"]
    assert ViewSectors(50.0, 50.0, 60.0).directions(cams) == ["front", "front", "side", "back", "back", "back", "side",
                                                             "front"]
    assert torch.allclose(cams.azimuth, torch.tensor([0.0, 45, 90, 135, -180, -135, -90, -45]))
    assert ViewSectors.of(prior).directions(_cams([70.0], [0.0])) == ["overhead"]


def test_centre_rays_hit_origin_and_corner_rays_span_the_fov():
    cams = _cams([20.0, -5.0], [30.0, -120.0], fov=60.0)
    H = W = 9  # odd: the middle pixel's centre is the image centre
    origins, dirs = cams.rays(H, W)
    assert origins.shape == dirs.shape == (2, H, W, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(2, H, W), atol=1e-5)
    o, d = origins[:, 4, 4], dirs[:, 4, 4]
    closest = o + ((-o) * d).sum(-1, keepdim=True) * d
    assert closest.norm(dim=-1).max() < 1e-5
    # Top row points up (toward +Z for a level camera), left column points left.
    level = _cams([0.0], [0.0], fov=60.0)
    _, d = level.rays(H, W)
    assert d[0, 0, 4, 2] > 0 and d[0, -1, 4, 2] < 0 and d[0, 4, 0, 0] < 0 and d[0, 4, -1, 0] > 0
    # Angle between the top and bottom pixel-edge rays is the vertical fov.
    _, d = level.rays(2, 1)
    half = torch.atan2(d[0, 0, 0, 2], d[0, 0, 0, 1])
    assert math.isclose(2 * math.degrees(math.atan(math.tan(half) * 2)), 60.0, rel_tol=1e-4)


def test_mvp_projects_origin_to_centre_and_pixels_back_onto_their_rays():
    cams = _cams([20.0, 40.0], [30.0, -150.0], fov=45.0)
    mvp = cams.mvp(0.1, 10.0)
    clip = mvp @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    ndc = clip[:, :3] / clip[:, 3:]
    assert torch.allclose(ndc[:, :2], torch.zeros(2, 2), atol=1e-5)
    assert torch.all(ndc[:, 2].abs() < 1)
    # A point along the ray of pixel (row 1, col 6) of an 8x8 image lands at that pixel's NDC centre.
    origins, dirs = cams.rays(8, 8)
    p = origins[:, 1, 6] + 1.7 * dirs[:, 1, 6]
    clip = torch.einsum("bij,bj->bi", mvp, torch.cat([p, torch.ones(2, 1)], -1))
    ndc = clip[:, :2] / clip[:, 3:]
    expected = torch.tensor([(6 + 0.5) / 8 * 2 - 1, 1 - (1 + 0.5) / 8 * 2])
    assert torch.allclose(ndc, expected.expand(2, 2), atol=1e-5)
    assert torch.allclose(cams.w2c() @ cams.c2w, torch.eye(4).expand(2, 4, 4), atol=1e-5)


def test_light_dirs_stay_near_the_camera():
    cams = orbit_cameras(16)
    light = sample_light_dirs(cams, torch.Generator().manual_seed(0), spread=0.3)
    back = cams.position / cams.position.norm(dim=-1, keepdim=True)
    assert torch.allclose(light.norm(dim=-1), torch.ones(16), atol=1e-5)
    assert (light * back).sum(-1).min() > 0.3


def test_turntables_look_from_the_middle_of_the_training_cameras():
    from prolific.config import CameraConfig
    from prolific.render.cameras import turntable_cameras

    cfg = CameraConfig()
    cams = turntable_cameras(8, cfg)
    assert torch.allclose(cams.distance, torch.full((8,), sum(cfg.camera_distance) / 2))
    assert torch.allclose(torch.rad2deg(cams.fov_y), torch.full((8,), sum(cfg.fov_deg) / 2))
    assert torch.allclose(cams.elevation, torch.full((8,), 15.0)) and cams.azimuth[0].item() == 0.0


def test_nearer_cameras_see_the_scene_grown_about_the_origin():
    cams = sample_cameras(3, CameraConfig(), torch.Generator().manual_seed(2))
    near = cams.nearer(torch.tensor([1.0, 2.0, 1.5]))
    origins, dirs = cams.rays(4, 4)
    near_origins, near_dirs = near.rays(4, 4)
    # A ray of the nearer camera is its twin scaled down: it meets a point p where the original meets p * factor.
    factor = torch.tensor([1.0, 2.0, 1.5]).view(3, 1, 1, 1)
    assert torch.allclose(near_origins, origins / factor) and torch.allclose(near_dirs, dirs)
    assert torch.allclose(near.distance, cams.distance / factor.flatten())
    assert torch.allclose(near.position.norm(dim=-1), near.distance)
    assert torch.equal(cams.nearer(2.0).distance, cams.distance / 2)
