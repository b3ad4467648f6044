"""The ETA of events.Reporter on a fake clock: every stage still to come is counted, each at its own step time
once it runs, and the shown value counts down instead of jumping back and forth."""
import random

import pytest

from prolific.config import make_config
from prolific.events import RESOLUTION_EXPONENT, STAGE_COST, JobWarning, Phase, Reporter
from prolific.pipeline import plan_phases

# The demo preset on a 2-core CPU (issue 10): NeRF 0.55 s/step at 32 px, 1.02 s at 64 px from step 80; the
# texture stage and the export took 47 s after the NeRF's last step.
DEMO = [(Phase("nerf", 0, 80, 32), 0.55), (Phase("nerf", 80, 200, 64), 1.02), (Phase("texture", 0, 60, 64), 0.6),
        (Phase("export", 0, 1, 64), 11.0)]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(plan, noise=0.0, seed=0, first_step_s=0.0):
    """Drive a Reporter through `plan` [(phase, seconds per step)] as the stages do (a stage-start call, then one
    call per finished step), each step's time off by up to ±noise, the first of each stage by +first_step_s.
    Returns [(stage, step, shown ETA, true seconds left)] for every call."""
    rng = random.Random(seed)
    steps = []  # (stage, step, total, seconds)
    for stage in dict.fromkeys(p.stage for p, _ in plan):
        mine = [(p, t) for p, t in plan if p.stage == stage]
        total = mine[-1][0].end
        for p, t in mine:
            steps += [(stage, i, total, t * (1 + noise * rng.uniform(-1, 1)) + (first_step_s if i == 1 else 0.0))
                      for i in range(p.start + 1, p.end + 1)]
    clock, events = FakeClock(), []
    reporter = Reporter(events.append, phases=[p for p, _ in plan], min_interval_s=0, clock=clock)
    left = sum(s for *_, s in steps)
    rows, stage_now = [], None
    for stage, step, total, seconds in steps:
        if stage != stage_now:
            stage_now = stage
            reporter.step(stage, 0, total)
            rows.append((stage, 0, events[-1].eta_s, left))
        clock.now += seconds
        left -= seconds
        reporter.step(stage, step, total)
        rows.append((stage, step, events[-1].eta_s, left))
    return rows


def rises(rows, after_step):
    """Seconds the shown ETA went up, summed, from `after_step` of the first stage on."""
    etas = [eta for stage, step, eta, _ in rows if stage != rows[0][0] or step >= after_step]
    return sum(b - a for a, b in zip(etas, etas[1:]) if b > a)


def test_the_demo_eta_counts_the_stages_to_come_and_counts_down():
    rows = run(DEMO, noise=0.2)
    assert [r[2] for r in rows[:2]] == [None, None], "no ETA before a step time is measured"
    shown = {(stage, step): eta for stage, step, eta, _ in rows}
    truth = {(stage, step): left for stage, step, _, left in rows}
    # At the NeRF's last step the texture stage and the export are still to come (the old ETA said 2:28 for 47 s).
    assert 0.5 * truth["nerf", 200] < shown["nerf", 200] < 1.5 * truth["nerf", 200]
    for stage, step, eta, left in rows[4:]:
        assert abs(eta - left) < max(left, 10.0), (stage, step, eta, left)
    nerf = [row for row in rows if row[0] == "nerf"]
    assert rises(nerf, after_step=20) < 0.015 * shown["nerf", 20], "it counts down through the resolution switch"
    assert rows[-1][2] == 0.0


def test_a_steady_stage_counts_down_through_noisy_steps():
    rows = run([(Phase("nerf", 0, 300, 64), 1.0)], noise=0.3, first_step_s=5.0)
    assert rises(rows, after_step=20) < 2.0, "no going back up once the first steps are in"
    assert all(abs(eta - left) < 0.15 * left + 2.0 for _, step, eta, left in rows if step >= 20)
    assert rows[-1][2] == 0.0


def test_a_started_stage_is_priced_at_its_own_step_time_and_its_first_step_left_out():
    clock, events = FakeClock(), []
    phases = [Phase("nerf", 0, 10, 64), Phase("texture", 0, 100, 64)]
    reporter = Reporter(events.append, phases=phases, min_interval_s=0, clock=clock)
    reporter.step("nerf", 0, 10)
    for step in range(1, 11):
        clock.now += 2.0
        reporter.step("nerf", step, 10)
    predicted = reporter.times.seconds_per_step(phases[1])
    assert predicted == pytest.approx(2.0 * STAGE_COST["texture"]), "a stage not yet started, by its relative cost"
    reporter.step("texture", 0, 100)
    clock.now += 30.0  # the first step includes the stage's set-up
    reporter.step("texture", 1, 100)
    for step in range(2, 12):
        clock.now += 1.5
        reporter.step("texture", step, 100)
    assert reporter.times.seconds_per_step(phases[1]) == pytest.approx(1.5)
    assert reporter.times.remaining_s("texture", 11) == pytest.approx(89 * 1.5)


def test_a_higher_resolution_not_reached_yet_is_priced_by_the_image_side():
    clock = FakeClock()
    phases = [Phase("nerf", 0, 10, 32), Phase("nerf", 10, 20, 64)]
    reporter = Reporter(phases=phases, min_interval_s=0, clock=clock)
    for step in range(0, 6):
        reporter.step("nerf", step, 20)
        clock.now += 1.0
    assert reporter.times.remaining_s("nerf", 5) == pytest.approx(5 * 1.0 + 10 * 2 ** RESOLUTION_EXPONENT)


def test_the_pipeline_plans_a_phase_per_resolution_and_stage():
    cfg = make_config("x", "demo")
    assert plan_phases(cfg, mesh_job=True) == [
        Phase("nerf", 0, 80, 32), Phase("nerf", 80, 200, 64), Phase("geometry", 0, 0, 64),
        Phase("texture", 0, 60, 64), Phase("export", 0, 1, 64)]
    nerf_only = make_config("x", "test", {"stages": ["nerf"], "nerf": {"steps": 2}})
    assert plan_phases(nerf_only, mesh_job=False) == [Phase("nerf", 0, 2, 16), Phase("nerf", 2, 2, 24)]


def test_a_stage_of_no_steps_still_shows_the_eta_of_the_stages_after_it():
    clock, events = FakeClock(), []
    phases = plan_phases(make_config("x", "demo"), mesh_job=True)
    reporter = Reporter(events.append, phases=phases, min_interval_s=0, clock=clock)
    for step in range(0, 201):
        reporter.step("nerf", step, 200)
        clock.now += 1.0
    reporter.step("geometry", 0, 0)
    assert events[-1].stage == "geometry" and events[-1].eta_s > 0


def test_warnings_go_to_the_sink_at_once():
    events = []
    Reporter(events.append).warn("unknown_words", "The bundled toy prior does not know the word 'teapot'.")
    assert events == [JobWarning("unknown_words", "The bundled toy prior does not know the word 'teapot'.")]
