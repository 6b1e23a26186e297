"""TensorBoard runs named by job: a rerun replaces the job's run, a failure leaves none, foreign files are kept."""

from __future__ import annotations

import pytest

from localizer.report import tensorboard_run


def scalar_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in folder.iterdir():
        if f.name.startswith("events"):
            tags |= set(EventAccumulator(str(f)).Reload().Tags()["scalars"])
    return tags


def test_runs_by_job_are_replaced_on_rerun_and_removed_on_failure(tmp_path):
    with tensorboard_run(tmp_path, "select", "job") as logger:
        logger.experiment.add_scalar("first", 1.0, 0)
        logger.finalize("success")
    assert scalar_tags(tmp_path / "job" / "select") == {"first"}
    with pytest.raises(RuntimeError), tensorboard_run(tmp_path, "ablate/next-token", "job") as logger:
        logger.experiment.add_scalar("x", 1.0, 0)
        raise RuntimeError("the ablation failed")
    assert not (tmp_path / "job" / "ablate" / "next-token").exists()  # no empty or partial run
    with tensorboard_run(tmp_path, "select", "job") as logger:  # the job again: its run is replaced
        logger.experiment.add_scalar("second", 2.0, 0)
        logger.finalize("success")
    assert scalar_tags(tmp_path / "job" / "select") == {"second"}
    (tmp_path / "job" / "select" / "notes.txt").write_text("mine")
    with tensorboard_run(tmp_path, "select", "job") as logger:  # a folder with other files is never emptied
        logger.experiment.add_scalar("third", 3.0, 0)
        logger.finalize("success")
    assert (tmp_path / "job" / "select" / "notes.txt").read_text() == "mine"
    assert scalar_tags(tmp_path / "job" / "select") == {"second", "third"}
    with tensorboard_run(None, "select", "job") as logger:
        assert logger is None
