"""MLflow tracking end to end (session sqlite store): params, metric names and integer steps, artifacts,
run status FINISHED/FAILED/KILLED, resumed runs continue the same MLflow run, multirun parent/child."""

from __future__ import annotations

import json

import pytest
from conftest import compose_cfg

from analogtrain.engine.trainer import Trainer, TrainingDiverged
from analogtrain.run import train
from analogtrain.tracking import flatten, resolve_tracking_uri

FAST = ["trainer.progress=off", "model.hidden_sizes=[32]", "data.limit_train=200", "trainer.epochs=3",
        "trainer.log_every_n_steps=5"]


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def mlflow_run(tmp_path, mlflow_uri, experiment, *overrides, name="run"):
    cfg = compose_cfg([*FAST, "logger=mlflow", f"logger.tracking_uri={mlflow_uri}",
                       f"logger.experiment={experiment}", *overrides])
    return train(cfg, run_dir=tmp_path / name)


def interrupted_run(tmp_path, mlflow_uri, experiment, *overrides):
    """``mlflow_run`` that must end in KeyboardInterrupt; returns the experiment's one MLflow run."""
    with pytest.raises(KeyboardInterrupt):
        mlflow_run(tmp_path, mlflow_uri, experiment, *overrides)
    c = client(mlflow_uri)
    (r,) = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    return r


def test_run_logs_params_metrics_artifacts_and_finishes(tmp_path, mlflow_uri):
    s = mlflow_run(tmp_path, mlflow_uri, "t_end_to_end", "algo=digital", "trainer.lr=0.3")
    c = client(mlflow_uri)
    r = c.get_run(s["mlflow_run_id"])
    assert r.info.status == "FINISHED" and r.info.run_name == "digital-mlp-s0"
    p = r.data.params
    assert p["trainer.lr"] == "0.3" and p["model.hidden_sizes"] == "[32]" and p["data.name"] == "digits"
    assert p["algo.name"] == "digital" and "tile.forward.out_noise" in p and "seeds.pulse" in p
    assert r.data.tags["analogtrain.data_source"].startswith("scikit-learn")  # where the samples came from
    steps = {k: [m.step for m in c.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}
    # per-step train loss at multiples of log_every_n_steps; per-epoch metrics at epochs 1..3
    n_steps = s["global_step"]  # 200 samples / batch 8 = 25 per epoch
    assert n_steps == 75 and steps["train/loss"] == list(range(5, 76, 5))
    for k in ("val/acc", "val/loss", "test/acc", "test/loss", "train/loss_epoch", "train/acc", "lr",
              "perf/steps_per_s", "progress/samples"):
        assert steps[k] == [1, 2, 3], k
    assert r.data.metrics["test/acc"] == pytest.approx(s["test/acc"])
    assert all(isinstance(st, int) for v in steps.values() for st in v)
    arts = {a.path for a in c.list_artifacts(r.info.run_id)}
    assert {"config.yaml", "curves.png", "history.csv", "summary.json"} <= arts
    local = c.download_artifacts(r.info.run_id, "summary.json", str(tmp_path))
    summary = json.loads(open(local).read())
    assert summary["status"] == "FINISHED" and summary["test/acc"] == pytest.approx(s["test/acc"])
    png = c.download_artifacts(r.info.run_id, "curves.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    cfg_art = open(c.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path))).read()
    assert "lr: 0.3" in cfg_art


def test_diverged_run_ends_failed_with_the_reason(tmp_path, mlflow_uri):
    cfg = compose_cfg(["experiment=least_squares", "trainer.lr=5", "trainer.progress=off", "logger=mlflow",
                       f"logger.tracking_uri={mlflow_uri}", "logger.experiment=t_failed"])
    with pytest.raises(TrainingDiverged):
        train(cfg, run_dir=tmp_path)
    c = client(mlflow_uri)
    (r,) = c.search_runs([c.get_experiment_by_name("t_failed").experiment_id])
    assert r.info.status == "FAILED"
    assert "train/loss became" in r.data.tags["analogtrain.error"]


def test_interrupted_run_ends_killed_and_resume_continues_the_same_run(tmp_path, mlflow_uri, monkeypatch):
    orig = Trainer._run_epoch

    def interrupt_in_epoch_2(self, epoch, *a, **kw):
        if epoch == 1:
            raise KeyboardInterrupt
        return orig(self, epoch, *a, **kw)

    monkeypatch.setattr(Trainer, "_run_epoch", interrupt_in_epoch_2)
    r = interrupted_run(tmp_path, mlflow_uri, "t_killed")
    c = client(mlflow_uri)
    assert r.info.status == "KILLED"
    monkeypatch.setattr(Trainer, "_run_epoch", orig)
    s = mlflow_run(tmp_path, mlflow_uri, "t_killed")  # same run dir -> resume
    assert s["mlflow_run_id"] == r.info.run_id
    runs = c.search_runs([c.get_experiment_by_name("t_killed").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["analogtrain.resumed"] == "true"
    assert [m.step for m in c.get_metric_history(r.info.run_id, "val/acc")] == [1, 2, 3]


def test_restart_without_a_checkpoint_starts_a_new_run_with_the_current_params(tmp_path, mlflow_uri,
                                                                              monkeypatch):
    """A run dir whose run never saved a checkpoint (diverged or stopped in its first epoch) has nothing to
    resume: starting it again opens a new MLflow run with the new params; the old run keeps its status."""
    orig = Trainer._run_epoch

    def interrupt_in_epoch_1(self, epoch, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_run_epoch", interrupt_in_epoch_1)
    interrupted_run(tmp_path, mlflow_uri, "t_no_ckpt", "trainer.lr=0.3")
    monkeypatch.setattr(Trainer, "_run_epoch", orig)
    s = mlflow_run(tmp_path, mlflow_uri, "t_no_ckpt", "trainer.lr=0.1")
    c = client(mlflow_uri)
    runs = {r.info.run_id: r for r in c.search_runs([c.get_experiment_by_name("t_no_ckpt").experiment_id])}
    assert len(runs) == 2
    new = runs.pop(s["mlflow_run_id"])
    (old,) = runs.values()
    assert old.info.status == "KILLED" and old.data.params["trainer.lr"] == "0.3"
    assert new.info.status == "FINISHED" and new.data.params["trainer.lr"] == "0.1"
    assert "analogtrain.resumed" not in new.data.tags


def test_bad_input_found_while_building_leaves_no_mlflow_run(tmp_path, mlflow_uri):
    """Errors only the built objects can find (here: more pipeline stages than layers) stop the run before
    its MLflow run exists."""
    from analogtrain.config.errors import ConfigError

    with pytest.raises(ConfigError) as ei:
        mlflow_run(tmp_path, mlflow_uri, "t_bad_build", "trainer.pipeline.mode=sync",
                   "trainer.pipeline.stages=9")
    assert ei.value.key.startswith("trainer.pipeline")
    c = client(mlflow_uri)
    exp = c.get_experiment_by_name("t_bad_build")
    assert exp is None or not c.search_runs([exp.experiment_id])
    assert not (tmp_path / "run" / "mlflow_run.json").exists()


def test_a_second_interrupt_while_finishing_still_records_the_status(tmp_path, mlflow_uri, monkeypatch):
    """Ctrl-C, then another one while the artifacts are written: the MLflow run still ends KILLED with its
    artifacts (the end of the run defers signals until its records are written)."""
    import os
    import signal

    import analogtrain.run as run_mod

    orig_art = run_mod.log_artifacts

    def interrupted_artifacts(*a, **kw):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, in the middle of the artifacts
        return orig_art(*a, **kw)

    def interrupt(self, epoch, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_run_epoch", interrupt)
    monkeypatch.setattr(run_mod, "log_artifacts", interrupted_artifacts)
    r = interrupted_run(tmp_path, mlflow_uri, "t_twice")
    assert r.info.status == "KILLED"
    assert "summary.json" in {a.path for a in client(mlflow_uri).list_artifacts(r.info.run_id)}


def test_artifact_hooks_of_analog_algorithms(tmp_path, monkeypatch):
    """Analog runs log the device plot (analogtrain.devices.plot.device_figure) and whatever the
    algorithm's optional ``artifacts(model, out_dir)`` returns."""
    import sys
    import types

    from analogtrain.run import log_artifacts

    logged = []

    class Rec:
        def log_artifact(self, path, sub=None):
            logged.append((path.name, sub))

    fake = types.ModuleType("analogtrain.devices.plot")
    fake.device_figure = lambda dev, path: path.write_bytes(b"png") and path
    monkeypatch.setitem(sys.modules, "analogtrain.devices.plot", fake)

    class Algo:
        is_analog = True

        def artifacts(self, model, out):
            (out / "transfer.png").write_bytes(b"x")
            return [out / "transfer.png"]

    cfg = compose_cfg(["logger=none"])
    (tmp_path / "config.yaml").write_text("x: 1")
    log_artifacts(cfg, Rec(), tmp_path, Algo(), None, {"status": "FINISHED"}, [{"epoch": 1, "train/loss_epoch": 1.0}])
    assert ("device.png", None) in logged and ("transfer.png", "algo") in logged
    assert ("curves.png", None) in logged and ("summary.json", None) in logged


def test_multirun_creates_parent_with_children(tmp_path, mlflow_uri, monkeypatch, capsys):
    from analogtrain import cli

    monkeypatch.chdir(tmp_path)
    status = cli.main(["-m", "algo=digital", "model=mlp", "seed=0,1", "trainer.epochs=1", "data.limit_train=64", "model.hidden_sizes=[8]",
                       "trainer.progress=off", f"logger.tracking_uri={mlflow_uri}", "logger.experiment=t_sweep",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}", "+logger.tags.study=abc"])
    assert status == 0
    c = client(mlflow_uri)
    runs = c.search_runs([c.get_experiment_by_name("t_sweep").experiment_id])
    parents = [r for r in runs if r.data.tags.get("analogtrain.role") == "sweep-parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["sweep.seed"] == "0,1"
    assert parent.data.params["sweep.logger.tags.study"] == "abc"  # (Hydra's + is not part of the key)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted(r.info.run_name for r in children) == ["digital-mlp-s0-j0", "digital-mlp-s1-j1"]
    assert children[0].data.tags["choice.model"] == "mlp" and "override.seed" in children[0].data.tags
    assert "multirun.yaml" in {a.path for a in c.list_artifacts(parent.info.run_id)}


def test_flatten_and_uri(tmp_path, monkeypatch):
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path / 'rel' / 'x.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_pipeline_run_logs_loss_against_samples_and_clock_cycles(tmp_path, mlflow_uri):
    """The pipeline study's two x-axes: the same windowed loss at step = samples seen and step = cycles."""
    s = mlflow_run(tmp_path, mlflow_uri, "t_pipeline_axes", "algo=digital", "trainer.epochs=1",
                   "trainer.pipeline.mode=async", "trainer.pipeline.stages=2", "trainer.pipeline.micro_batches=2")
    c = client(mlflow_uri)
    run_id = s["mlflow_run_id"]
    by_step = c.get_metric_history(run_id, "train/loss")
    by_samples = c.get_metric_history(run_id, "train/loss_vs_samples")
    by_cycles = c.get_metric_history(run_id, "train/loss_vs_cycles")
    assert len(by_step) == len(by_samples) == len(by_cycles) > 1
    assert [m.value for m in by_samples] == [m.value for m in by_step] == [m.value for m in by_cycles]
    cycles = [m.step for m in by_cycles]
    samples = [m.step for m in by_samples]
    assert cycles == sorted(cycles) and len(set(cycles)) == len(cycles)  # clock strictly advances
    assert all(b > a for a, b in zip(samples, samples[1:]))
    assert cycles[-1] <= s["pipeline/cycles"] and cycles[-1] > samples[-1]  # >= 1 cycle per sample
    # the pipeline counters themselves stay on the global-step axis, their end-of-epoch (drained) value too
    hist = c.get_metric_history(run_id, "pipeline/cycles")
    steps = [m.step for m in hist]
    assert steps == sorted(steps) and steps[-1] == s["global_step"] and steps[0] > 1
    assert hist[-1].value == s["pipeline/cycles"]


def test_extended_run_keeps_its_first_params_and_tags_the_new_length(tmp_path, mlflow_uri):
    """MLflow params are immutable: a resume to more epochs keeps trainer.epochs=1 as the param and says
    the length it trained to in the tag resume.trainer.epochs."""
    first = mlflow_run(tmp_path, mlflow_uri, "t_extend", "trainer.epochs=1")
    second = mlflow_run(tmp_path, mlflow_uri, "t_extend", "trainer.epochs=2")
    assert second["mlflow_run_id"] == first["mlflow_run_id"] and second["epoch"] == 2
    r = client(mlflow_uri).get_run(first["mlflow_run_id"])
    assert r.data.params["trainer.epochs"] == "1" and r.data.tags["resume.trainer.epochs"] == "2"
    assert "resume.trainer.epochs" not in client(mlflow_uri).get_run(first["mlflow_run_id"]).data.params
