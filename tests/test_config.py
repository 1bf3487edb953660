"""The real conf/ tree: every option of every group composes over its schema and validates; registries
and config groups agree; validation rejects bad values with the dotted key and the allowed values."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from analogtrain.config.errors import ConfigError
from analogtrain.config.validate import validate_config
from analogtrain.utils.paths import conf_dir

CONF = conf_dir()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
LAUNCHERS = sorted(f.stem for f in (CONF / "hydra" / "launcher").glob("*.yaml"))


def test_conf_tree_has_the_documented_groups():
    for g in ("device", "algo", "model", "data", "trainer", "logger", "experiment", "sweep"):
        assert g in GROUPS
        assert any((CONF / g).glob("*.yaml")), g


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_composes_and_validates(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    validate_config(cfg)  # device_from_config, validate_tile and the algorithm's validate included
    if group in ("model", "data", "algo", "logger"):
        assert cfg[group].name, "every option names itself (used by registries and run names)"


def test_default_job_is_analog_sgd_on_digits_mlp():
    cfg = compose_cfg()
    assert (cfg.data.name, cfg.model.name, cfg.algo.name, cfg.device.name) == ("digits", "mlp", "sgd", "softbounds")
    assert list(cfg.model.hidden_sizes) == [256, 128] and cfg.model.activation == "tanh"
    validate_config(cfg)


def test_paper_mlp_keeps_sigmoid():
    cfg = compose_cfg(["model=mlp"])
    assert list(cfg.model.hidden_sizes) == [256, 128] and cfg.model.activation == "sigmoid"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_configs_compose(launcher):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert ("Joblib" in target) if launcher == "parallel" else ("Submitit" in target or "submitit" in target)
    if launcher == "slurm":
        assert "Slurm" in target


def test_sweep_overlays_define_a_grid():
    for f in sorted((CONF / "sweep").glob("*.yaml")):
        cfg = compose_cfg([f"sweep={f.stem}"], return_hydra_config=True)
        assert cfg.hydra.sweeper.params, f"{f.name} sets hydra.sweeper.params"


def test_experiment_overlays_are_global_packages():
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        assert f.read_text().startswith("# @package _global_"), f.name


def test_every_model_and_dataset_has_a_config_and_vice_versa():
    from analogtrain.data import DATASETS
    from analogtrain.models import MODELS

    # options may be named variants of a registry entry (mlp_tanh -> mlp, swin_224 -> swin)
    model_names = {compose_cfg([f"model={f.stem}"]).model.name for f in (CONF / "model").glob("*.yaml")}
    assert set(MODELS) == model_names
    assert set(DATASETS) == {f.stem for f in (CONF / "data").glob("*.yaml")}


@pytest.mark.parametrize(("override", "key", "allowed"), [
    ("trainer.epochs=0", "trainer.epochs", "1 <= epochs"),
    ("trainer.lr=-0.1", "trainer.lr", "0.0 < lr"),
    ("trainer.lr_schedule=linear", "trainer.lr_schedule", "none, step, cosine"),
    ("trainer.progress=maybe", "trainer.progress", "auto, on, off"),
    ("data.val_fraction=1.0", "data.val_fraction", "val_fraction < 1.0"),
    ("data.batch_size=0", "data.batch_size", "1 <= batch_size"),
    ("model.activation=swish", "model.activation", "sigmoid, relu, tanh"),
    ("model.hidden_sizes=[16,0]", "model.hidden_sizes[1]", "1 <= hidden_sizes[1]"),
    ("logger.name=wandb", "logger.name", "mlflow, none"),
    ("logger.tracking_uri=./mlruns", "logger.tracking_uri", "sqlite:///"),
    ("tile.backend=gpu", "tile.backend", "auto, compiled, reference"),
    ("seed=-1", "seed", "0 <= seed"),
    ("+trainer.foo=1", "trainer.foo", "allowed keys: accelerator"),
    ("+bogus=1", "bogus", "allowed keys: algo, data, device"),
])
def test_validation_names_key_and_allowed_values(override, key, allowed):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as ei:
        validate_config(cfg)
    assert ei.value.key == key
    msg = str(ei.value)
    assert msg.startswith(f"{key}: ") and allowed in msg and "\n" not in msg


def test_schema_rejects_unknown_keys_and_wrong_types_at_composition():
    from hydra.errors import ConfigCompositionException

    for bad in ("trainer.nope=1", "trainer.epochs=abc", "data.limit_train=1.5", "model.bias=maybe"):
        with pytest.raises(ConfigCompositionException):
            compose_cfg([bad])


def test_digital_is_the_default_algo_on_one_line():
    lines = [ln for ln in (CONF / "train.yaml").read_text().splitlines() if ln.strip().startswith("- algo:")]
    assert len(lines) == 1


EXPERIMENTS = sorted(f.stem for f in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_overlay_names_an_objective_its_run_produces(experiment):
    """The start-of-run check of `trainer.objective` (before any training) passes for every overlay as
    written: a regression overlay (synthetic least squares) gets a loss, not the classification default."""
    from analogtrain.data import build_data
    from analogtrain.run import resolve_objective

    cfg = compose_cfg([f"experiment={experiment}"])
    try:
        data = build_data(cfg.data, 0)
    except ConfigError as e:  # a data set that needs files this machine lacks (e.g. Fashion-MNIST)
        pytest.skip(str(e).splitlines()[0])
    name = resolve_objective(cfg.trainer.objective, data)
    metric = "acc" if data.task == "classification" else "loss"
    assert name.endswith(metric) if cfg.trainer.objective == "auto" else name == cfg.trainer.objective


def test_objective_auto_follows_the_task_and_the_splits():
    from types import SimpleNamespace

    from analogtrain.run import resolve_objective

    def data(task, n_val, n_test):
        return SimpleNamespace(task=task, val=[0] * n_val, test=[0] * n_test)

    assert resolve_objective("auto", data("classification", 5, 5)) == "val/acc"
    assert resolve_objective("auto", data("classification", 0, 5)) == "test/acc"
    assert resolve_objective("auto", data("regression", 5, 5)) == "val/loss"
    assert resolve_objective("auto", data("regression", 0, 5)) == "test/loss"
    assert resolve_objective("auto", data("regression", 0, 0)) == "train/loss_epoch"
    assert resolve_objective("auto", data("classification", 0, 0)) == "train/acc"
    assert resolve_objective("test/loss", data("regression", 0, 5)) == "test/loss"
    with pytest.raises(ConfigError) as e:
        resolve_objective("val/acc", data("regression", 0, 5))
    assert e.value.key == "trainer.objective"
    assert "choose auto or one of test/loss, train/loss_epoch" in str(e.value)


def test_library_recipe_composes_in_a_fresh_process():
    """README "As a library": Hydra's compose API on ``analogtrain.conf`` finds the schemas without any
    registration call of the user's (a fresh interpreter: this session's ConfigStore is already filled)."""
    import subprocess
    import sys

    code = ("from hydra import compose, initialize_config_module\n"
            "with initialize_config_module('analogtrain.conf', version_base=None):\n"
            "    cfg = compose('train', overrides=['algo=cttv2', 'logger=mlflow'])\n"
            "print(cfg.algo.name, cfg.logger.experiment is not None)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["cttv2", "True"]


def test_config_errors_survive_pickling():
    """Multirun launchers (joblib, submitit) pickle a failed job's exception back to the launcher."""
    import pickle

    from analogtrain.data.base import DataFileError, DataNotFoundError

    for e in (ConfigError("trainer.epochs", "0 is out of range"), DataFileError("data.root", "bad file"),
              DataNotFoundError("data.root", "missing")):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.key == e.key and str(back) == str(e)


def test_plain_path_in_mlflow_tracking_uri_env_is_a_config_error(monkeypatch):
    """The environment's store (logger.tracking_uri null) is checked like the config value: a plain path
    would reach MLflow's file store and fail there with a traceback after the model was built."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "/tmp/somewhere/y.db")
    with pytest.raises(ConfigError) as ei:
        validate_config(compose_cfg([]))
    assert ei.value.key == "MLFLOW_TRACKING_URI" and "sqlite:////tmp/somewhere/y.db" in str(ei.value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/somewhere/y.db")
    validate_config(compose_cfg([]))
