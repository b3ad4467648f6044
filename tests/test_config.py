"""Job settings: every preset builds a valid config, and bad values are refused with the setting named."""
import pytest

from prolific.config import PRESETS, STAGES, make_config
from prolific.errors import BadRequest


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_a_valid_config(preset):
    cfg = make_config("a red teapot", preset)
    assert cfg.preset == preset and cfg.stages == STAGES
    assert len(cfg.nerf.resolutions) == len(cfg.nerf.resolution_milestones) + 1
    assert all(m < cfg.nerf.steps for m in cfg.nerf.resolution_milestones), "a resolution stage never reached"
    assert cfg.to_dict()["nerf"]["steps"] == cfg.nerf.steps


def test_presets_grow_in_cost():
    steps = [make_config("x", p).nerf.steps for p in ("test", "draft", "standard", "high", "paper")]
    assert steps == sorted(steps) and steps[0] < 20


def test_overrides_reach_the_nested_settings():
    cfg = make_config("x", "test", {"seed": 7, "particles": 2, "stages": ["nerf"], "nerf": {"steps": 4},
                                    "prior": {"guidance": "sds"}, "export": {"formats": ["glb"]}})
    assert (cfg.seed, cfg.particles, cfg.stages, cfg.nerf.steps) == (7, 2, ("nerf",), 4)
    assert cfg.prior.guidance == "sds" and cfg.export.formats == ("glb",)
    assert cfg.nerf.resolutions == (16, 24), "the preset's other nerf settings are kept"


@pytest.mark.parametrize("prompt, preset, overrides, named", [
    ("", "test", {}, "prompt"),
    ("x", "ultra", {}, "preset"),
    ("x", "test", {"nerf": {"steps": -1}}, "nerf.steps"),
    ("x", "test", {"geometry": {"steps": 1.5}}, "geometry.steps"),
    ("x", "test", {"seed": -3}, "seed"),
    ("x", "test", {"particles": 0}, "Particles"),
    ("x", "test", {"stages": ["texture", "nerf"]}, "order"),
    ("x", "test", {"stages": ["mesh"]}, "Stages"),
    ("x", "test", {"prior": {"guidance": "magic"}}, "guidance"),
    ("x", "test", {"nerf": {"lr_typo": 1}}, "nerf.lr_typo"),
    ("x", "test", {"colour": 1}, "colour"),
    ("x", "test", {"device": "tpu"}, "device"),
    ("x", "test", {"export": {"formats": ["fbx"]}}, "formats"),
    ("x", "test", {"nerf": {"resolutions": [64], "resolution_milestones": [10]}}, "resolutions"),
    ("x", "test", {"prior": {"camera_dropout": 1.5}}, "camera_dropout"),
    ("x", "test", {"prior": {"lora_t_min": 0.5, "lora_t_max": 0.2}}, "lora_t_min"),
    ("x", "test", {"prior": {"front_half_width_deg": 120, "back_half_width_deg": 90}}, "front_half_width_deg"),
    ("x", "test", {"nerf": {"sparsity_weight": -1}}, "sparsity_weight"),
    ("x", "test", {"nerf": {"random_background": 2}}, "random_background"),
    ("x", "test", {"geometry": {"sdf_init": "exact"}}, "sdf_init"),
    ("x", "test", {"geometry": {"normal_consistency_on": "edge"}}, "normal_consistency_on"),
    ("x", "test", {"geometry": {"betas": [0.9, 1.0]}}, "betas"),
    ("x", "test", {"texture": {"anneal_fraction": -0.1}}, "texture.anneal_fraction"),
])
def test_bad_settings_are_refused_with_the_setting_named(prompt, preset, overrides, named):
    with pytest.raises(BadRequest) as err:
        make_config(prompt, preset, overrides)
    assert err.value.code == "bad_request"
    assert named in err.value.message
