"""Sweeps through real ``analogtrain -m`` processes: joblib (parallel, one torch thread per worker) and
submitit-local launchers with MLflow parent/child runs, and the fresh-sqlite-DB race between processes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ANALOGTRAIN, cli_env

TINY = ["trainer.epochs=1", "data.limit_train=64", "data.limit_test=64", "model.hidden_sizes=[8]",
        "trainer.progress=off"]


def _runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    return c.search_runs([c.get_experiment_by_name(experiment).experiment_id])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "local"])
def test_launcher_sweep_with_parent_and_children(tmp_path, launcher):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"  # a DB that does not exist yet: the callback creates it first
    sweep_dir = tmp_path / "sweep"
    p = subprocess.run([ANALOGTRAIN, "-m", f"hydra/launcher={launcher}", "seed=0,1", *TINY,
                        f"logger.tracking_uri={uri}", "logger.experiment=t_launch", f"hydra.sweep.dir={sweep_dir}"],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, p.stderr[-4000:]
    runs = _runs(uri, "t_launch")
    parent = [r for r in runs if r.data.tags.get("analogtrain.role") == "sweep-parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent[0].info.run_id}
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    if launcher == "parallel":
        assert {r.data.tags["analogtrain.torch_threads"] for r in children} == {"1"}
    for i in (0, 1):
        assert (sweep_dir / str(i) / "artifacts" / "summary.json").is_file()


@pytest.mark.slow
def test_parallel_sweep_with_a_bad_job_names_it_and_runs_the_others(tmp_path):
    """A job refused for its config in a joblib worker: its ConfigError crosses the process boundary
    (pickled), so the sweep still runs the good job and ends with the one-line message, exit 2 — not a
    BrokenProcessPool traceback that loses both."""
    sweep_dir = tmp_path / "sweep"
    cmd = [ANALOGTRAIN, "-m", "hydra/launcher=parallel", "trainer.epochs=0,1", *TINY[1:], "logger=none",
           f"hydra.sweep.dir={sweep_dir}"]
    p = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=500)
    assert p.returncode == 2, p.stderr[-4000:]
    assert "analogtrain: error: trainer.epochs: 0 is out of range" in p.stderr and "Traceback" not in p.stderr
    assert (sweep_dir / "1" / "artifacts" / "summary.json").is_file()  # the good job ran


@pytest.mark.slow
def test_sweep_overlay_grid(tmp_path):
    """``sweep=lr_seed`` expands its grid (3 lr x 3 seeds); a command-line value replaces a grid axis."""
    uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
    p = subprocess.run([ANALOGTRAIN, "-m", "sweep=lr_seed", "seed=0", *TINY, f"logger.tracking_uri={uri}",
                        f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path, env=cli_env(), capture_output=True,
                       text=True, timeout=500)
    assert p.returncode == 0, p.stderr[-4000:]
    children = [r for r in _runs(uri, "sweep_lr_seed") if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(float(r.data.params["trainer.lr"]) for r in children) == [0.05, 0.1, 0.2]
    assert {r.data.params["seed"] for r in children} == {"0"}


@pytest.mark.slow
def test_parallel_first_use_of_a_fresh_sqlite_db(tmp_path):
    """Two processes opening a new DB at once: the file lock serialises the schema migration."""
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    code = ("import sys; from analogtrain.tracking.mlflow_tracker import MLflowTracker as T; "
            f"t = T({uri!r}, 'race', 'r' + sys.argv[1]); t.log_metrics({{'x': 1.0}}, 0); t.finish()")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=cli_env(), stderr=subprocess.PIPE)
             for i in range(2)]
    for pr in procs:
        assert pr.wait(timeout=120) == 0, pr.stderr.read().decode()[-2000:]
    assert len(_runs(uri, "race")) == 2
