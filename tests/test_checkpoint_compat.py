"""Checkpoints written before the stage runner (commit c87ba52, tests/data/make_old_checkpoints.py) still resume,
and end where that backend's own resume of them ended."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from data.make_old_checkpoints import JOBS, config, stages_of, weights_summary
from prolific.pipeline import run_job

ARCHIVE = Path(__file__).parent / "data" / "checkpoints_c87ba52.tar.xz"


@pytest.fixture(scope="module")
def old_jobs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("old_jobs")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(folder, filter="data")
    return folder


# The old jobs name the hash table size as nerf.hash_log2_size, as the backend then did (now hash_grid.): the
# old name still works, with a FutureWarning.
@pytest.mark.filterwarnings("ignore:The setting nerf.hash_log2_size:FutureWarning")
@pytest.mark.parametrize("job", list(JOBS))
def test_a_checkpoint_from_before_the_runner_resumes_to_the_same_end(old_jobs, job, tiny_sd_model):
    stage, step = JOBS[job]
    events = []
    cfg = config(tiny_sd_model, stages_of(job))
    cfg.nerf.renderer = "dense"  # the renderer those jobs ran with (issue 11 made the packed one the default)
    run_job(cfg, old_jobs, job, sink=events.append, resume=True)

    assert [e.step for e in events if e.stage == stage][0] == step  # continued from the old checkpoint's step
    expected = json.loads((old_jobs / "resumed_ends.json").read_text())[job]
    ends = weights_summary(old_jobs / job)
    assert ends.keys() == expected.keys()
    for name, norms in expected.items():
        assert ends[name].keys() == norms.keys()
        for key, norm in norms.items():
            assert ends[name][key] == pytest.approx(norm, rel=1e-4), f"{name} {key}"
