"""Auto-resume: kill -9 a real ``analogtrain`` process mid-run, start the same run directory again, and get
bit-identical final metrics and weights (and the same MLflow run); N + M epochs == N+M epochs in-process;
a checkpoint of a different config is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from conftest import ANALOGTRAIN, cli_env, compose_cfg

from analogtrain.config.errors import ConfigError
from analogtrain.engine.checkpoint import checkpoint_path, load_checkpoint
from analogtrain.run import train

KILL = ["trainer.epochs=8", "model.hidden_sizes=[64]", "trainer.progress=off", "logger.experiment=t_resume_kill"]


@pytest.mark.slow
def test_kill_9_then_restart_matches_uninterrupted_run(tmp_path, mlflow_uri):
    overrides = [*KILL, "logger=mlflow", f"logger.tracking_uri={mlflow_uri}"]
    ref = train(compose_cfg(overrides), run_dir=tmp_path / "ref")

    run_dir = tmp_path / "killed"
    cmd = [ANALOGTRAIN, *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = checkpoint_path(run_dir)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= 2:
            os.kill(proc.pid, signal.SIGKILL)  # no cleanup, no chance to end the MLflow run
            proc.wait()
            killed_at = load_checkpoint(ckpt)["epoch"]
            break
        time.sleep(0.02)
    assert killed_at is not None, f"process ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL and killed_at < 8
    first_run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]

    p = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resuming at epoch" in p.stderr
    summary = json.loads((run_dir / "artifacts" / "summary.json").read_text())
    for k in ("train/loss_epoch", "val/loss", "val/acc", "test/loss", "test/acc", "global_step"):
        assert summary[k] == ref[k], k  # bit-identical, not approximately equal
    a = load_checkpoint(checkpoint_path(tmp_path / "ref"))["model"]
    b = load_checkpoint(ckpt)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_uri)
    assert summary["mlflow_run_id"] == first_run_id
    r = c.get_run(first_run_id)
    assert r.info.status == "FINISHED" and r.data.tags.get("analogtrain.resumed") == "true"
    hist = c.get_metric_history(first_run_id, "test/loss")
    assert {m.step for m in hist} == set(range(1, 9))
    last = {m.step: m.value for m in sorted(hist, key=lambda m: m.timestamp)}
    assert last[8] == pytest.approx(ref["test/loss"], rel=1e-12)


def test_n_plus_m_epochs_equals_n_plus_m(tmp_path):
    base = ["logger=none", "trainer.progress=off", "model.hidden_sizes=[32]", "data.limit_train=300"]
    full = train(compose_cfg([*base, "trainer.epochs=4"]), run_dir=tmp_path / "full")
    train(compose_cfg([*base, "trainer.epochs=2"]), run_dir=tmp_path / "split")
    resumed = train(compose_cfg([*base, "trainer.epochs=4"]), run_dir=tmp_path / "split")  # continues 2 -> 4
    for k in ("train/loss_epoch", "val/loss", "test/loss", "test/acc", "global_step", "epoch"):
        assert resumed[k] == full[k], k
    # a finished run started again is a no-op that reports the same result
    again = train(compose_cfg([*base, "trainer.epochs=4"]), run_dir=tmp_path / "split")
    assert again["test/loss"] == full["test/loss"] and again["global_step"] == full["global_step"]


def test_resume_refuses_a_different_config_and_resume_false_starts_over(tmp_path):
    base = ["logger=none", "trainer.progress=off", "model.hidden_sizes=[16]", "data.limit_train=100",
            "trainer.epochs=1"]
    first = train(compose_cfg(base), run_dir=tmp_path)
    with pytest.raises(ConfigError) as ei:
        train(compose_cfg([*base, "trainer.lr=0.05"]), run_dir=tmp_path)
    assert ei.value.key == "trainer.resume" and "trainer.lr (0.2 -> 0.05)" in str(ei.value)
    fresh = train(compose_cfg([*base, "trainer.lr=0.05", "trainer.resume=false"]), run_dir=tmp_path)
    assert fresh["global_step"] == first["global_step"] and fresh["test/loss"] != first["test/loss"]


def test_a_checkpoint_cut_mid_epoch_by_max_steps_is_not_trained_on(tmp_path):
    """trainer.max_steps that ends inside an epoch leaves that epoch's remaining batches untrained: raising
    max_steps on resume would skip them (a result no uninterrupted run gives), so it is refused, naming the
    key; a max_steps on an epoch boundary continues exactly like an uninterrupted run."""
    base = ["logger=none", "trainer.progress=off", "model.hidden_sizes=[16]", "data.limit_train=200",
            "trainer.epochs=3", "algo=digital"]  # 200 training samples / batch 8: 25 steps per epoch
    cut = train(compose_cfg([*base, "trainer.max_steps=10"]), run_dir=tmp_path / "cut")
    assert cut["global_step"] == 10
    with pytest.raises(ConfigError) as ei:
        train(compose_cfg([*base, "trainer.max_steps=40"]), run_dir=tmp_path / "cut")
    assert ei.value.key == "trainer.max_steps" and "inside epoch 1 at step 10" in str(ei.value)
    again = train(compose_cfg([*base, "trainer.max_steps=10"]), run_dir=tmp_path / "cut")  # reports it
    assert again["test/loss"] == cut["test/loss"]

    full = train(compose_cfg([*base, "trainer.max_steps=50"]), run_dir=tmp_path / "full")
    train(compose_cfg([*base, "trainer.max_steps=25"]), run_dir=tmp_path / "split")  # one whole epoch
    resumed = train(compose_cfg([*base, "trainer.max_steps=50"]), run_dir=tmp_path / "split")
    for k in ("train/loss_epoch", "val/loss", "test/loss", "global_step", "epoch"):
        assert resumed[k] == full[k], k
