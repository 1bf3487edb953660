"""Shared test setup: one CPU thread, an isolated MLflow store, config composition helpers.

Fixtures/helpers for every test file:

* ``compose_cfg(overrides)`` (also a fixture ``compose``): the real ``conf/`` composed through Hydra's
  compose API with the runner's schemas registered (``conf`` is loaded as ``pkg://analogtrain.conf``, the
  same way the installed CLI loads it).
* ``mlflow_uri`` (session): one sqlite MLflow store per test session (a new DB costs seconds). Tests
  that need isolation use their own ``logger.experiment``.
* ``MLFLOW_TRACKING_URI`` points into the session's temp dir for the whole session, so nothing a test
  (or a CLI subprocess it starts) logs lands in the repository's ``outputs/mlflow.db``.
* ``-m cuda`` tests are skipped cleanly without a GPU.
* The session's temp dir (MLflow store included) is removed when pytest exits, so repeated test runs do
  not fill ``/tmp``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="analogtrain-tests-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_TMP / 'mlflow.db'}"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ANALOGTRAIN = str(Path(sys.executable).parent / "analogtrain")  # the console script of this venv


def compose_cfg(overrides=(), return_hydra_config: bool = False):
    """Compose ``conf/train.yaml`` with ``overrides`` (list of ``key=value`` / ``group=option``)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from analogtrain.config.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("analogtrain.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


@pytest.fixture
def compose():
    return compose_cfg


@pytest.fixture(scope="session")
def mlflow_uri() -> str:
    """The session's MLflow store, created once (schema migrations take seconds)."""
    from analogtrain.tracking.mlflow_tracker import get_client

    uri = os.environ["MLFLOW_TRACKING_URI"]
    get_client(uri)
    return uri


def cli_env(**extra) -> dict:
    """Environment for CLI subprocesses: one thread, no TTY-dependent behaviour, session MLflow store."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", TERM="dumb")
    env.pop("HYDRA_FULL_ERROR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def pytest_unconfigure(config):
    """Remove the session's temp dir (its MLflow store and whatever tests wrote beside it)."""
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
