"""Experiment tracking: a small ``Tracker`` interface, its MLflow implementation and a no-op one.

MLflow is imported lazily (1-2 s) and only used through ``MlflowClient`` with explicit run ids, so the
same code works in-process (basic launcher), in joblib workers and in SLURM jobs, and a resumed run can
re-open its MLflow run by id.

Conventions (see README "MLflow"):
* params: the resolved config flattened to dotted keys (``trainer.lr``, ``device.asymmetry``, ...);
* metrics: ``split/name`` and ``tile/<layer>/<stat>`` with integer steps (per-step metrics at the global
  optimizer step, per-epoch metrics at the epoch number 1..E);
* run status: FINISHED / FAILED / KILLED, set truthfully by ``run.train``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit on params per log_batch call
METRICS_PER_BATCH = 1000


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute cwd>/outputs/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / 'outputs' / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None) -> str:
    """Config value (``logger.tracking_uri``) or the default; relative sqlite paths become absolute so
    that every job of a sweep (whatever its cwd) writes to the same DB."""
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = Path(uri[len("sqlite:///"):])
        uri = f"sqlite:///{path.expanduser().resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _db_lock(uri: str):
    """Serialise the first use of a sqlite DB across processes: two alembic migrations racing on a new DB
    fail with ``duplicate column name`` (environment.md §3)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def get_client(uri: str):
    """An ``MlflowClient`` whose store (and sqlite schema) exists; safe to call from parallel processes."""
    from mlflow.tracking import MlflowClient

    with _db_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates / migrates the DB under the lock
    return client


def get_or_create_experiment(client, uri: str, name: str) -> str:
    """Experiment id of ``name``; new experiments keep their artifacts next to a sqlite DB
    (``<db dir>/mlartifacts/<name>``) instead of ``./mlruns`` of whatever directory the job runs in."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = sqlite_path(uri)
    location = (db.parent / "mlartifacts" / name).resolve().as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it in between
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": value}``; lists stay values (logged as their string form)."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    else:
        out[prefix] = node
    return out


class Tracker:
    """No-op tracker (``logger=none``); also the interface of :class:`MLflowTracker`."""

    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


class MLflowTracker(Tracker):
    """One MLflow run.

    Args:
        uri: tracking URI (see :func:`resolve_tracking_uri`).
        experiment: experiment name (created on first use).
        run_name: display name; tags: extra tags; parent_run_id: makes this a child run (sweeps).
        resume_run_id: re-open this run (status RUNNING again) instead of creating one.
    """

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict | None = None,
                 parent_run_id: str | None = None, resume_run_id: str | None = None):
        from mlflow.entities import RunStatus  # noqa: F401  (import check, fails fast if mlflow is broken)

        self.tracking_uri = uri
        self.client = get_client(uri)
        self.resumed = False
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        if resume_run_id:
            try:
                run = self.client.get_run(resume_run_id)
                self.run_id = resume_run_id
                self.experiment_id = run.info.experiment_id
                self.client.update_run(resume_run_id, status="RUNNING")
                self.resumed = True
                for k, v in tags.items():
                    self.client.set_tag(resume_run_id, k, v)
                self.client.set_tag(resume_run_id, "analogtrain.resumed", "true")
                return
            except Exception as e:  # DB moved/deleted: start a fresh run, say so
                log.warning("could not re-open MLflow run %s (%s); starting a new run", resume_run_id, e)
        self.experiment_id = get_or_create_experiment(self.client, uri, experiment)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()
                 if v is not None and not (isinstance(v, float) and math.isnan(v) and k.startswith("tile/"))]
        for i in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i:i + METRICS_PER_BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v)[:5000])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
