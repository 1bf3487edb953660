"""Hydra callback: one MLflow *parent* run per multirun; each job's run becomes its child.

``on_multirun_start`` runs once in the launching process before any job starts: it creates/migrates the
sqlite DB and the experiment (so parallel workers never race on a fresh DB, environment.md §3), creates
the parent run and writes its id to ``<sweep dir>/.mlflow_parent.json``. Jobs (in-process, joblib
workers or SLURM jobs sharing the file system) read that file and tag their run with
``mlflow.parentRunId``. Re-launching the same sweep dir re-uses the parent. The parent ends FINISHED in
``on_multirun_end``; if the sweep raises, ``analogtrain.cli`` ends it FAILED/KILLED
(:func:`end_open_parents`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PARENT_FILE = ".mlflow_parent.json"
_OPEN_PARENTS: list[tuple[str, str]] = []  # (tracking uri, run id) created by this process


def read_parent(sweep_dir: str | Path) -> dict | None:
    """The parent-run record of a sweep dir (``{"tracking_uri", "run_id", "experiment_id"}``) or None."""
    p = Path(sweep_dir) / PARENT_FILE
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def end_open_parents(status: str) -> None:
    """Terminate parent runs this process opened (called by the CLI when a sweep fails or is killed)."""
    from analogtrain.tracking.mlflow_tracker import get_client

    while _OPEN_PARENTS:
        uri, run_id = _OPEN_PARENTS.pop()
        try:
            get_client(uri).set_terminated(run_id, status=status)
        except Exception as e:  # never mask the original error
            log.warning("could not end MLflow parent run %s: %s", run_id, e)


class MLflowSweepCallback(Callback):
    """Registered in ``conf/train.yaml`` under ``hydra.callbacks.mlflow_sweep``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.logger.name != "mlflow":
            return
        from analogtrain.tracking.mlflow_tracker import get_client, get_or_create_experiment, resolve_tracking_uri

        uri = resolve_tracking_uri(config.logger.tracking_uri)
        client = get_client(uri)  # creates the DB now, before parallel jobs start
        exp_id = get_or_create_experiment(client, uri, config.logger.experiment)
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        rec = read_parent(sweep_dir)
        if rec and rec.get("tracking_uri") == uri:
            client.update_run(rec["run_id"], status="RUNNING")
            run_id = rec["run_id"]
            _OPEN_PARENTS.append((uri, run_id))
        else:
            overrides = list(config.hydra.overrides.task)
            params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
            if isinstance(params, DictConfig):
                params = OmegaConf.to_container(params, resolve=True)
            tags = {"analogtrain.sweep_dir": str(sweep_dir), "analogtrain.role": "sweep-parent",
                    "sweep.overrides": " ".join(overrides)[:5000]}
            run = client.create_run(exp_id, run_name=f"sweep-{sweep_dir.parent.name}-{sweep_dir.name}", tags=tags)
            run_id = run.info.run_id
            # linked and ended whatever follows: the children find the parent through this file
            (sweep_dir / PARENT_FILE).write_text(json.dumps(
                {"tracking_uri": uri, "run_id": run_id, "experiment_id": exp_id}))
            _OPEN_PARENTS.append((uri, run_id))
            # the sweeper's grid, then the command line (which wins over the grid for the same key); the
            # key without Hydra's +/++/~ prefix (not a valid MLflow name, and not part of the key)
            grid = {str(k).lstrip("+~"): str(v) for k, v in params.items()}
            command = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1] for o in overrides if "=" in o}
            for k, v in {**grid, **command}.items():
                try:
                    client.log_param(run_id, f"sweep.{k}"[:250], str(v)[:6000])
                except Exception as e:  # noqa: BLE001 - a param MLflow refuses must not unlink the sweep
                    log.warning("sweep parent: param sweep.%s not logged: %s", k,
                                str(e).splitlines()[0][:200])
        log.info("MLflow parent run %s (experiment '%s', %s)", run_id, config.logger.experiment, uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.logger.name != "mlflow" or not _OPEN_PARENTS:
            return
        from analogtrain.tracking.mlflow_tracker import get_client

        uri, run_id = _OPEN_PARENTS.pop()
        client = get_client(uri)
        sweep_file = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        if sweep_file.is_file():
            client.log_artifact(run_id, str(sweep_file))
        client.set_terminated(run_id, status="FINISHED")
