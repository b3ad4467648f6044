"""The sidebar panels drawn against a recording layout, in real Blender: what the user sees when idle and while
a job runs. The add-on is registered from the source folder (no install needed for drawing)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from addon_helpers import ROOT, needs_bpy, run_blender

pytestmark = needs_bpy

SETUP = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import blender_addon
from blender_addon import jobs, panel
blender_addon.register()

class Recorder:
    \"\"\"Stands in for bpy.types.UILayout: records every call, hands out sub-layouts and operator properties.\"\"\"
    def __init__(self, calls):
        object.__setattr__(self, "calls", calls)
    def __setattr__(self, name, value):
        self.calls.append(("set", name, value))
    def __getattr__(self, name):
        def call(*args, **kwargs):
            entry = {{"call": name, "args": [a if isinstance(a, (str, int, float)) else type(a).__name__ for a in args],
                      "kwargs": {{k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in kwargs.items()}}}}
            self.calls.append(entry)
            if name == "operator":
                return OperatorProps(entry)
            return Recorder(self.calls)
        return call

class OperatorProps:
    def __init__(self, entry):
        object.__setattr__(self, "entry", entry)
    def __setattr__(self, name, value):
        self.entry.setdefault("props", {{}})[name] = value

class FakePanel:
    def __init__(self):
        self.calls = []
        self.layout = Recorder(self.calls)

def draw(cls):
    fake = FakePanel()
    cls.draw(fake, bpy.context)
    return [c for c in fake.calls if isinstance(c, dict)]

scene = bpy.context.scene.prolific
scene.prompt = "a red teapot"
"""


def calls_named(calls, name):
    return [c for c in calls if c["call"] == name]


def test_idle_panel_shows_the_settings_and_generate(tmp_path):
    facts = run_blender(SETUP + """
report(main=draw(panel.PROLIFIC_PT_main), queue=draw(panel.PROLIFIC_PT_queue),
       advanced=draw(panel.PROLIFIC_PT_advanced))
""", tmp_path)
    main = facts["main"]
    shown = [c["args"][1] for c in calls_named(main, "prop")]
    assert shown == ["prompt", "negative_prompt", "preset", "seed", "variations"]
    assert [c["args"][0] for c in calls_named(main, "operator")] == ["prolific.generate"]
    assert not calls_named(main, "progress")
    assert [c["kwargs"]["text"] for c in calls_named(facts["queue"], "label")] == ["No jobs yet."]
    assert [c["args"][1] for c in calls_named(facts["advanced"], "prop")] == [
        "guidance", "guidance_scale", "geometry_guidance_scale", "nerf_steps", "geometry_steps", "texture_steps",
        "texture_size"]


def test_running_job_shows_stage_progress_eta_preview_and_cancel(tmp_path):
    preview = tmp_path / "nerf_000004.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(preview)
    facts = run_blender(SETUP + f"""
running = jobs.QUEUE.add(jobs.Job(id="job-1", prompt="a red teapot", preset="test", seed=0, variations=1))
jobs.QUEUE.apply({{"event": "warning", "id": "job-1", "code": "unknown_words",
                  "message": "The bundled toy prior does not know the word 'teapot'."}})
jobs.QUEUE.apply({{"event": "progress", "id": "job-1", "stage": "nerf", "step": 3, "total": 6, "eta_s": 75.0,
                  "preview": {str(preview)!r}}})
waiting = jobs.QUEUE.add(jobs.Job(id="job-2", prompt="a blue chair", preset="test", seed=0, variations=1))
failed = jobs.QUEUE.add(jobs.Job(id="job-0", prompt="a hamburger", preset="test", seed=0, variations=1))
jobs.QUEUE.apply({{"event": "error", "id": "job-0", "code": "model_not_found", "message": "No model at /x."}})
report(main=draw(panel.PROLIFIC_PT_main), queue=draw(panel.PROLIFIC_PT_queue),
       preview_size=list(panel.load_preview(running.preview).image_size))
""", tmp_path)
    main = facts["main"]
    labels = [c["kwargs"].get("text", "") for c in calls_named(main, "label")]
    assert "Stage: nerf (3/6)" in labels and "ETA 1:15" in labels
    assert "The bundled toy prior does not know the word 'teapot'." in labels  # the backend's warning event
    (bar,) = calls_named(main, "progress")
    assert bar["kwargs"]["factor"] == 0.5 and bar["kwargs"]["type"] == "BAR"
    assert len(calls_named(main, "template_icon")) == 1  # icon ids stay 0 without a UI, so check the image
    assert facts["preview_size"] == [16, 16]
    cancel = [c for c in calls_named(main, "operator") if c["args"][0] == "prolific.cancel"]
    assert cancel and cancel[0]["props"] == {"job_id": "job-1"}
    queue = facts["queue"]
    rows = [c["kwargs"]["text"] for c in calls_named(queue, "label")]
    assert rows == ["a red teapot — nerf 3/6", "a blue chair — starting", "a hamburger — error", "No model at /x."]
    cancels = [c["props"]["job_id"] for c in calls_named(queue, "operator") if c["args"][0] == "prolific.cancel"]
    assert cancels == ["job-1", "job-2"]
    assert "prolific.clear_finished" in [c["args"][0] for c in calls_named(queue, "operator")]


def test_advanced_settings_become_backend_overrides_only_when_enabled(tmp_path):
    facts = run_blender(SETUP + """
scene.negative_prompt = "blurry"
off = scene.overrides()
scene.use_advanced, scene.guidance, scene.nerf_steps, scene.texture_size = True, "sds", 100, 512
report(off=off, on=scene.overrides())
""", tmp_path)
    assert facts["off"] == {}  # the negative prompt is the job's own field (jobs.submit), not an advanced setting
    on = facts["on"]
    assert on["prior"] == {"guidance": "sds", "sds_guidance_scale": 7.5}
    assert on["nerf"] == {"steps": 100} and on["export"] == {"texture_size": 512}
    assert on["geometry"] == {"steps": 2000, "guidance_scale": 100.0}
    assert on["texture"]["guidance"] == "sds"


def test_a_stopped_job_with_checkpoints_offers_resume(tmp_path):
    """Resume appears only where there is a checkpoint to continue from; an interrupted job says why it stopped."""
    (tmp_path / "out" / "job-7" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "job-7" / "checkpoints" / "nerf.pt").write_bytes(b"saved")
    facts = run_blender(SETUP + f"""
def job(i, prompt):
    return jobs.QUEUE.add(jobs.Job(id=i, prompt=prompt, preset="test", seed=0, variations=1,
                                   out_dir={str(tmp_path / "out")!r}, folder=i))
stopped = job("job-7", "a red teapot")
jobs.QUEUE.apply({{"event": "cancelled", "id": "job-7"}})
empty = job("job-8", "a blue chair")
jobs.QUEUE.apply({{"event": "cancelled", "id": "job-8"}})
interrupted = jobs.Job.from_record(dict(stopped.record(), id="job-9", state="running"))
interrupted.folder = "job-7"
jobs.QUEUE.jobs.append(interrupted)
report(queue=draw(panel.PROLIFIC_PT_queue), resumable=[j.resumable for j in jobs.QUEUE.jobs])
""", tmp_path)
    assert facts["resumable"] == [True, False, True]
    resumes = [c["props"]["job_id"] for c in calls_named(facts["queue"], "operator")
               if c["args"][0] == "prolific.resume"]
    assert resumes == ["job-7", "job-9"]
    labels = [c["kwargs"]["text"] for c in calls_named(facts["queue"], "label")]
    assert "Blender closed while this job ran. Resume continues from its last checkpoint." in labels
