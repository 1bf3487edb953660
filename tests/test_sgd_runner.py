"""``algo=sgd`` end to end through the runner (composed Hydra config -> run.train): per-layer tile metrics
reach the epoch metrics (and MLflow), and analog training resumes exactly from a checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")

torch.set_num_threads(1)


def compose(overrides):
    from hydra import compose as h_compose
    from hydra import initialize_config_dir

    from analogtrain.config.schema import register_configs

    register_configs()
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base=None):
        return h_compose(config_name="train", overrides=overrides)


BASE = ["algo=sgd", "model=mlp", "model.hidden_sizes=[16]", "model.activation=tanh", "trainer=quick",
        "trainer.epochs=2", "trainer.max_steps=12", "trainer.lr=0.2", "trainer.progress=off"]


def test_sgd_mlp_through_runner_logs_tile_metrics(tmp_path):
    from analogtrain.run import train

    cfg = compose(BASE + ["logger=none"])
    summary = train(cfg, run_dir=tmp_path / "run")
    assert summary["status"] == "FINISHED"
    tile_keys = [k for k in summary if k.startswith("tile/")]
    layers = {k.split("/")[1] for k in tile_keys}
    assert len(layers) == 2, tile_keys  # both Linear layers are analog
    for layer in layers:
        for stat in ("pulses_per_update", "frac_at_bounds", "w_mean", "w_std"):
            assert f"tile/{layer}/{stat}" in summary
        assert summary[f"tile/{layer}/pulses_per_update"] > 0


def test_run_prepares_the_kernel_before_its_first_step(tmp_path, monkeypatch):
    """The runner builds/loads the tile kernel (ops.prepare_kernel) before the first epoch starts, so a
    first build is not counted in that epoch's steps/s; a digital run asks for no kernel."""
    from analogtrain import ops
    from analogtrain.engine.trainer import Trainer
    from analogtrain.run import train

    events = []
    real_prepare, real_epoch = ops.prepare_kernel, Trainer._run_epoch

    def prepare(device_type):
        events.append(("prepare", device_type))
        return real_prepare(device_type)

    def run_epoch(self, epoch, *a, **k):
        events.append(("epoch", epoch))
        return real_epoch(self, epoch, *a, **k)

    monkeypatch.setattr(ops, "prepare_kernel", prepare)
    monkeypatch.setattr(Trainer, "_run_epoch", run_epoch)
    assert train(compose(BASE + ["logger=none"]), run_dir=tmp_path / "a")["status"] == "FINISHED"
    assert events == [("prepare", "cpu"), ("epoch", 0)]  # (max_steps 12 ends the run in epoch 0)
    events.clear()
    assert train(compose(BASE + ["logger=none", "algo=digital"]), run_dir=tmp_path / "d")["status"] == "FINISHED"
    assert events == [("epoch", 0)]


@pytest.mark.slow
def test_sgd_run_logs_tile_metrics_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from analogtrain.run import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose(BASE + ["logger=mlflow", f"logger.tracking_uri={uri}", "logger.experiment=t"])
    summary = train(cfg, run_dir=tmp_path / "run")
    run = MlflowClient(uri).get_run(summary["mlflow_run_id"])
    keys = [k for k in run.data.metrics if k.startswith("tile/")]
    assert any(k.endswith("/pulses_per_update") for k in keys), keys
    assert any(k.endswith("/frac_at_bounds") for k in keys)
    from analogtrain import ops

    assert run.data.tags["analogtrain.kernel"] == ("compiled" if ops.compiled_available("cpu") else "reference")
