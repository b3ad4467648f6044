"""The toy world: shape SDFs, the sphere-tracing renderer, captions and split, the prior check's scoring."""
from __future__ import annotations

import pytest
import torch

from prolific.config import CameraConfig
from prolific.render.cameras import cameras_from_angles
from prolific.toy import check
from prolific.toy.dataset import ToyData
from prolific.toy.render import render
from prolific.toy.shapes import HELD_OUT, PALETTE, RADIUS, SCALE, SHAPES, caption, parse_caption, sdf, training_pairs


def _front_camera(n: int = 1, elevation: float = 15.0):
    ones = torch.ones(n)
    return cameras_from_angles(elevation * ones, 20.0 * ones, 1.25 * ones, 55.0 * ones)


def test_sphere_and_cube_distances_are_exact():
    dirs = torch.nn.functional.normalize(torch.randn(100, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    r, half = 0.45 * SCALE, 0.33 * SCALE  # the modelled sizes, scaled into the world
    assert torch.allclose(sdf("sphere", r * dirs), torch.zeros(100), atol=1e-6)
    assert abs(sdf("sphere", torch.zeros(1, 3)).item() + r) < 1e-6
    faces = half * torch.tensor([[1.0, 0, 0], [0, -1.0, 0.3], [0.3, 0.6, 1.0]])
    assert torch.allclose(sdf("cube", faces), torch.zeros(3), atol=1e-6)
    assert abs(sdf("cube", torch.tensor([[half + 0.1, 0.0, 0.0]])).item() - 0.1) < 1e-6
    assert abs(sdf("cube", torch.tensor([[half + 0.1, half + 0.1, 0.0]])).item() - 0.1 * 2 ** 0.5) < 1e-6
    assert abs(sdf("cube", torch.zeros(1, 3)).item() + half) < 1e-6


def test_every_shape_is_solid_and_inside_its_bounding_sphere():
    dirs = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    inside = {"torus": SCALE * torch.tensor([[0.38, 0.0, 0.0]]), "table": SCALE * torch.tensor([[0.0, 0.0, 0.12]])}
    for shape in SHAPES:
        assert (sdf(shape, (RADIUS + 0.01) * dirs) > 0).all(), shape
        assert sdf(shape, inside.get(shape, torch.zeros(1, 3))).item() < 0, shape


def test_render_is_white_around_the_object_and_coloured_on_it():
    cams = _front_camera(2)
    albedo = torch.tensor([PALETTE["red"], PALETTE["blue"]])
    out = render(["sphere", "cube"], albedo, cams, 32, 32, shaded=torch.tensor([False, True]))
    rgb, mask = out["rgb"], out["mask"]
    assert torch.equal(rgb[:, :, 0, 0], torch.ones(2, 3)) and mask[:, 0, 0, 0].eq(0).all()
    assert mask[:, 0, 16, 16].eq(1).all()
    assert torch.allclose(rgb[0, :, 16, 16], albedo[0])  # flat shading = albedo
    lit = rgb[1, :, 16, 16]
    assert lit.argmax() == 2 and lit.max() < albedo[1].max() + 1e-6  # shaded blue, no brighter than albedo
    assert torch.allclose(out["albedo"][1, :, 16, 16], albedo[1])
    # the sphere's silhouette is a disc of the expected projected radius (0.3 at 1.25 m, fov 55°)
    area = mask[0, 0].sum().item()
    r = 0.45 * SCALE
    r_px = 16 * (r / (1.25 ** 2 - r ** 2) ** 0.5) / torch.tan(torch.deg2rad(torch.tensor(27.5))).item()
    assert abs(area - torch.pi * r_px ** 2) < 0.1 * area


def test_captions_and_split_are_deterministic():
    data = ToyData(image_size=16, supersample=1)
    a = data.sample(12, torch.Generator().manual_seed(3))
    b = data.sample(12, torch.Generator().manual_seed(3))
    c = data.sample(12, torch.Generator().manual_seed(4))
    assert a.captions == b.captions and torch.equal(a.images, b.images)
    assert a.captions != c.captions
    assert all(p not in training_pairs() for p in HELD_OUT) and len(training_pairs()) == 56 - len(HELD_OUT)
    for text, shape, colour in zip(a.captions, a.shapes, a.colours):
        assert (shape, colour) not in HELD_OUT
        named_shape, named_colour = parse_caption(text)
        assert named_shape in (shape, None) and named_colour in (colour, None)
    assert caption("cube", "orange") == "an orange cube" and caption("torus") == "a torus"


def test_check_scoring_passes_true_renders_and_fails_wrong_colours_blanks_and_fills():
    templates = check.silhouette_templates(size=48)
    cases = check.held_out_cases()
    assert len(cases) == 10 and len({c.full_prompt for c in cases}) == 10
    truth = check.true_renders(cases, 48)
    for case, image in zip(cases, truth):
        [score] = check.score_images(image[None], case.shape, case.colour, templates)
        assert score["ok"] and score["iou"] > 0.8, (case.full_prompt, score)
    wrong = "green" if cases[0].colour != "green" else "red"
    recoloured = check.true_renders([check.Case(cases[0].shape, wrong, cases[0].direction)], 48)
    [score] = check.score_images(recoloured, cases[0].shape, cases[0].colour, templates)
    assert not score["ok"] and score["colour"] == wrong
    [blank] = check.score_images(torch.ones(1, 3, 48, 48), "cube", "red", templates)
    assert not blank["ok"] and blank["iou"] == 0.0
    [full] = check.score_images(torch.tensor(PALETTE["red"]).view(1, 3, 1, 1).expand(1, 3, 48, 48), "cube", "red",
                                templates)
    assert not full["ok"] and full["colour"] == "red"  # a frame filled with red is not a red cube


class _ExactDenoiser:
    """A pixel-space 'prior' of images whose pixels are independent N(MEAN, STD²) in model space: its ε is the
    exact posterior mean at every t, so a right sampler draws images with that mean and about that spread."""

    MEAN, STD = 0.6, 0.2

    def __init__(self, prediction_type):
        from types import SimpleNamespace

        from prolific.toy.model import make_scheduler

        self.scheduler = make_scheduler(prediction_type)
        self.alphas = self.scheduler.alphas_cumprod
        self.device, self.pixel_space, self.image_size = torch.device("cpu"), True, 16
        self.unet = SimpleNamespace(config=SimpleNamespace(sample_size=16, in_channels=3))

    def embed_prompt(self, prompt):
        from types import SimpleNamespace

        return SimpleNamespace(get=lambda dirs: (torch.zeros(len(dirs), 1), torch.zeros(len(dirs), 1)))

    def predict_noise(self, x, t, cond, uncond, guidance):
        ab = self.alphas[t].view(-1, 1, 1, 1)
        a, b, var = ab.sqrt(), (1 - ab).sqrt(), self.STD ** 2
        x0 = self.MEAN + a * var / (a * a * var + b * b) * (x - a * self.MEAN)
        return (x - a * x0) / b

    def decode(self, x):
        return x


def test_the_check_samples_what_an_exact_prior_knows_whatever_its_prediction_type():
    for prediction_type in ("epsilon", "v_prediction"):  # predict_noise always answers ε
        images = check.sample_prior(_ExactDenoiser(prediction_type), "a red cube", "front", 4, 5.0, 50,
                                    torch.Generator().manual_seed(0))
        assert abs(images.mean().item() - _ExactDenoiser.MEAN) < 0.02, prediction_type
        assert 0.5 * _ExactDenoiser.STD < images.std().item() < 1.5 * _ExactDenoiser.STD, prediction_type


def test_oversized_objects_appear_only_under_the_empty_caption():
    from prolific.toy import dataset

    data = ToyData(image_size=16, supersample=1, undersize=0.0)
    batch = data.sample(400, torch.Generator().manual_seed(5))
    empty = torch.tensor([c == "" for c in batch.captions])
    assert 5 <= int(empty.sum()) <= 40  # P_OVERSIZE of 400 is 20
    near, far = CameraConfig.camera_distance
    low, high = dataset.OVERSIZE_SCALE
    distance = batch.cameras.distance
    assert ((distance[~empty] >= near - 1e-4) & (distance[~empty] <= far + 1e-4)).all()  # captions: true size
    assert ((distance[empty] >= near / high - 1e-4) & (distance[empty] <= far / low + 1e-4)).all()
    fill = (batch.images.amin(1) < 0.9).float().mean((1, 2))
    assert fill[empty].mean() > 2 * fill[~empty].mean()  # grown 1.3-2.2x: about 3x the area


def test_the_oversized_share_and_scales_are_settings_and_bad_ones_are_refused(capsys):
    from prolific.toy import train

    none = ToyData(image_size=16, supersample=1, oversize=0.0, undersize=0.0)
    none = none.sample(200, torch.Generator().manual_seed(5))
    assert "" not in none.captions
    big = ToyData(image_size=16, supersample=1, oversize=0.5, oversize_scale=(2.0, 2.2), undersize=0.0)
    batch = big.sample(200, torch.Generator().manual_seed(5))
    empty = torch.tensor([c == "" for c in batch.captions])
    assert 70 <= int(empty.sum()) <= 130
    assert (batch.cameras.distance[empty] <= CameraConfig.camera_distance[1] / 2.0 + 1e-4).all()
    for bad in (["--oversize", "1.0"], ["--oversize-scale", "0.8,2.0"], ["--oversize-scale", "1.5,3"],
                ["--oversize-scale", "big"]):
        with pytest.raises(SystemExit) as exit_info:
            train.parse_args(["--out", "unused", *bad])
        assert exit_info.value.code == 2
        assert "oversize" in capsys.readouterr().err


def test_undersized_objects_appear_only_under_the_empty_caption_beside_the_oversized_ones(capsys):
    from prolific.toy import train

    data = ToyData(image_size=16, supersample=1, oversize=0.2, undersize=0.3, undersize_scale=(0.5, 0.6))
    batch = data.sample(400, torch.Generator().manual_seed(5))
    empty = torch.tensor([c == "" for c in batch.captions])
    near, far = CameraConfig.camera_distance
    distance = batch.cameras.distance
    small = distance > far + 1e-4  # seen from farther than any captioned image
    big = distance < near - 1e-4
    assert 80 <= int(small.sum()) <= 160 and 40 <= int(big.sum()) <= 120  # 30% and 20% of 400 are 120 and 80
    assert empty[small].all() and empty[big].all()
    assert ((distance[~empty] >= near - 1e-4) & (distance[~empty] <= far + 1e-4)).all()
    assert (distance[empty & ~big] <= far / 0.5 + 1e-4).all()
    fill = (batch.images.amin(1) < 0.9).float().mean((1, 2))
    assert fill[small].mean() < 0.6 * fill[~empty].mean()  # 0.5-0.6x: about a third of the area
    for bad in (["--undersize", "0.96"], ["--undersize-scale", "0.3,0.8"], ["--undersize-scale", "0.6,1.2"]):
        with pytest.raises(SystemExit) as exit_info:
            train.parse_args(["--out", "unused", *bad])
        assert exit_info.value.code == 2
        assert "undersize" in capsys.readouterr().err


def test_size_probe_finds_the_prior_shrinking_an_object_twice_its_size():
    from prolific.prior.diffusion import load_prior
    from prolific.toy import size_probe

    assert size_probe.balance_scale([0.5, 1.0, 2.0], [3.0, 1.0, -1.0]) == pytest.approx(2 ** 0.5)
    assert size_probe.balance_scale([0.5, 1.0], [-1.0, -2.0]) == 0.5
    assert size_probe.balance_scale([0.5, 1.0], [1.0, 2.0]) is None
    prior = load_prior(None, torch.device("cpu"), torch.float32)
    result = size_probe.probe(prior, "a red cube", scales=(1.0, 2.0), timesteps=(300, 500), guidances=(1.0,),
                              views=4)
    pulls = result["guidance"]["1.0"]["mean_pull"]
    assert pulls[1] < 0 and pulls[1] < pulls[0], pulls  # the conditional prior alone pulls a 2x cube back
    with pytest.raises(ValueError, match="naming a toy shape and colour"):
        size_probe.probe(prior, "a red object", views=2)


def test_size_probe_command_refuses_a_prompt_without_shape_and_colour_before_loading_anything(capsys):
    from prolific.toy import size_probe

    with pytest.raises(SystemExit) as exit_info:
        size_probe.main(["--prompts", "a red cube;a red object"])
    assert exit_info.value.code == 2
    assert "must name a toy shape and colour" in capsys.readouterr().err
