"""Job settings: every preset builds a valid config, and bad values are refused with the setting named."""
import dataclasses

import pytest

from prolific.config import PRESETS, STAGES, JobConfig, make_config
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
    ("x", "test", {"geometry": {"density_threshold": "max"}},
     'geometry.density_threshold must be a positive number or "auto"'),
    ("x", "test", {"geometry": {"density_threshold": 0}}, "geometry.density_threshold"),
    ("x", "test", {"geometry": {"normal_consistency_on": "edge"}}, "normal_consistency_on"),
    ("x", "test", {"geometry": {"betas": [0.9, 1.0]}}, "betas"),
    ("x", "test", {"texture": {"anneal_fraction": -0.1}}, "texture.anneal_fraction"),
])
def test_bad_settings_are_refused_with_the_setting_named(prompt, preset, overrides, named):
    with pytest.raises(BadRequest) as err:
        make_config(prompt, preset, overrides)
    assert err.value.code == "bad_request"
    assert named in err.value.message


def default_of(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def every_field():
    """(section or None, field) for every setting, so a field added later is checked too."""
    out = []
    for f in dataclasses.fields(JobConfig):
        if f.name in ("prompt", "preset"):
            continue
        section = default_of(f)
        if dataclasses.is_dataclass(section):
            out += [(f.name, g) for g in dataclasses.fields(section)]
        else:
            out.append((None, f))
    return out


@pytest.mark.parametrize("section, f", every_field(), ids=lambda v: getattr(v, "name", v))
def test_every_setting_takes_its_own_default_and_refuses_a_value_of_another_type(section, f):
    default = default_of(f)
    wrong = 3 if isinstance(default, str) or default is None else "abc"
    name = f"{section}.{f.name}" if section else f.name

    def build(value):
        return make_config("x", "standard", {section: {f.name: value}} if section else {f.name: value})

    cfg = build(list(default) if isinstance(default, tuple) else default)  # lists, as JSON gives them
    assert getattr(getattr(cfg, section) if section else cfg, f.name) == default
    with pytest.raises(BadRequest) as err:
        build(wrong)
    assert err.value.message.startswith(f"{name} must be ") and repr(wrong) in err.value.message


@pytest.mark.parametrize("overrides, message", [
    ({"nerf": {"lr": "abc"}}, "nerf.lr must be a number such as 0.01 (got 'abc')."),
    ({"nerf": {"steps": 2.5}}, "nerf.steps must be a whole number such as 5000 (got 2.5)."),
    ({"nerf": {"lr": float("inf")}}, "nerf.lr must be a number such as 0.01 (got inf)."),
    ({"prior": {"view_dependent_prompt": "yes"}}, "prior.view_dependent_prompt must be true or false (got 'yes')."),
    ({"prior": {"model": 7}}, "prior.model must be text or null (got 7)."),
    ({"cameras": {"camera_distance": [1.0]}},
     "cameras.camera_distance must be a list of 2 numbers such as [1.0, 1.5] (got [1.0])."),
    ({"nerf": {"resolutions": [64, "x"]}},
     "nerf.resolutions must be a list of whole numbers such as [64, 512] (got [64, 'x'])."),
    ({"seed": "7"}, "seed must be a whole number such as 0 (got '7')."),
])
def test_a_value_of_the_wrong_type_is_named_with_the_type_wanted_and_an_example(overrides, message):
    with pytest.raises(BadRequest) as err:
        make_config("x", "test", overrides)
    assert err.value.message == message


def test_numbers_become_floats_and_lists_tuples():
    cfg = make_config("x", "test", {"nerf": {"lr": 1, "shading": [1, 0, 0]}})
    assert cfg.nerf.lr == 1.0 and isinstance(cfg.nerf.lr, float)
    assert cfg.nerf.shading == (1.0, 0.0, 0.0) and all(isinstance(v, float) for v in cfg.nerf.shading)


def test_a_job_without_a_preset_gets_the_one_that_fits_device_and_model():
    from prolific.config import default_preset

    assert default_preset("cuda", bundled_prior=False) == "standard"
    assert default_preset("cpu", bundled_prior=False) == "draft"
    assert default_preset("cpu", bundled_prior=True) == default_preset("cuda", bundled_prior=True) == "demo"


def test_a_camera_setting_under_its_old_section_still_works_with_a_warning():
    """Camera ranges moved from nerf to cameras (issue 14): `--set nerf.fov_deg=...` keeps working, said once."""
    from prolific.job_request import job_config

    told = []
    cfg, _ = job_config("x", "test", {"nerf": {"fov_deg": [50, 60], "steps": 2}}, told.append)
    assert cfg.cameras.fov_deg == (50.0, 60.0) and cfg.nerf.steps == 2
    assert told == ["The setting nerf.fov_deg is now cameras.fov_deg; the old name will stop working in a later "
                    "version."]
    with pytest.warns(FutureWarning, match="nerf.elevation_deg is now cameras.elevation_deg"):
        assert make_config("x", "test", {"nerf": {"elevation_deg": [0, 10]}}).cameras.elevation_deg == (0.0, 10.0)
    # The new name wins over the old one when a request gives both.
    cfg, _ = job_config("x", "test", {"nerf": {"fov_deg": [50, 60]}, "cameras": {"fov_deg": [45, 55]}}, told.append)
    assert cfg.cameras.fov_deg == (45.0, 55.0)
