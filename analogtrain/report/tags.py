"""Swept values of a multirun job as MLflow tags (``sweep.<key>``), so the MLflow UI can filter and group
child runs by them (``tags.`sweep.device.asymmetry` = '0.5'``) and the report finds them.

A key is *swept* when the sweep's definition gives it more than one value: a Hydra sweep override on the
command line (``device.asymmetry=0,0.5``, ``seed=range(3)``, ``algo=choice(sgd,tt)``) or an entry of
``hydra.sweeper.params`` (the ``conf/sweep/`` presets). Both are read from ``<sweep dir>/multirun.yaml``,
which Hydra's sweeper writes before any job starts (every launcher: basic, joblib, submitit/SLURM on a
shared file system).

Two ways to get the tags onto the runs (they give identical tags, both use :func:`sweep_tags`):

* the runner adds ``**sweep_tags(job_overrides, sweep_dir=...)`` to the tags of the run it creates;
* :class:`SweepTagsCallback` (a Hydra callback the ``conf/sweep/`` presets register under
  ``hydra.callbacks.sweep_tags``) tags the job's run after the job, finding it through
  ``<job output dir>/mlflow_run.json`` written by :mod:`analogtrain.run`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TAG_PREFIX = "sweep."
MULTIRUN_FILE = "multirun.yaml"  # written by Hydra's sweeper into the sweep dir
RUN_RECORD = "mlflow_run.json"  # written by analogtrain.run into each job's output dir
MAX_TAG_VALUE = 5000  # MLflow's limit on a tag value (8000 in recent versions; stay below)


def _parse(overrides: Iterable[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([str(o) for o in overrides])


def _skip(key: str) -> bool:
    """Hydra's own settings (launcher, sweep dir, ...) are never sweep axes of the experiment."""
    return key == "hydra" or key.startswith("hydra.") or key.startswith("hydra/")


def swept_keys(overrides: Iterable[str] = (), sweeper_params: Mapping[str, Any] | None = None) -> list[str]:
    """Keys that take more than one value in a sweep definition, in first-seen order.

    Args:
        overrides: the multirun's command-line overrides (``hydra.overrides.task`` of the launching
            process), e.g. ``["device.asymmetry=0,0.5", "algo=cttv2", "seed=range(3)"]``.
        sweeper_params: ``hydra.sweeper.params`` (``{"device.skew": "0,0.1", "seed": "0,1,2"}``).

    A key set to a single value on the command line replaces a preset's sweep of the same key, as in
    Hydra's BasicSweeper (command-line overrides come after the sweeper params).
    """
    is_sweep: dict[str, bool] = {}
    items = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(overrides)
    for ov in _parse(items):
        key = ov.key_or_group
        if _skip(key):
            continue
        is_sweep[key] = bool(ov.is_sweep_override()) and len(list(ov.sweep_string_iterator())) > 1
    return [k for k, s in is_sweep.items() if s]


def read_sweep_definition(sweep_dir: str | Path) -> tuple[list[str], dict[str, Any]] | None:
    """``(command-line overrides, sweeper params)`` of the sweep from ``<sweep_dir>/multirun.yaml``,
    or None when the file is missing (not a multirun, or the sweep dir is not shared)."""
    path = Path(sweep_dir) / MULTIRUN_FILE
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    conf = OmegaConf.load(path)
    overrides = [str(o) for o in OmegaConf.select(conf, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.select(conf, "hydra.sweeper.params", default=None)
    params = OmegaConf.to_container(params, resolve=False) if params is not None else {}
    return overrides, {str(k): v for k, v in (params or {}).items()}


def sweep_tags(overrides: Iterable[str], swept: Iterable[str] | None = None,
               sweep_dir: str | Path | None = None) -> dict[str, str]:
    """MLflow tags ``{"sweep.<key>": "<value>"}`` for the swept keys of one job.

    Args:
        overrides: this job's overrides (``HydraConfig.get().overrides.task`` inside the job, e.g.
            ``["algo=cttv2", "device.asymmetry=0.5", "seed=1"]``); values are tagged as written there.
        swept: the swept keys; None = read them from ``<sweep_dir>/multirun.yaml``; if that is missing
            too, every non-Hydra override of the job is tagged (a job of a sweep differs from its
            siblings only through its overrides, so nothing swept is lost).
        sweep_dir: the multirun's sweep dir; None and ``swept`` None means "not a multirun" -> ``{}``.

    Example: ``sweep_tags(["algo=tt", "device.skew=0.1", "seed=0"], swept=["device.skew", "seed"])``
    -> ``{"sweep.device.skew": "0.1", "sweep.seed": "0"}``.
    """
    if swept is None:
        if sweep_dir is None:
            return {}
        definition = read_sweep_definition(sweep_dir)
        swept_set = set(swept_keys(*definition)) if definition is not None else None
    else:
        swept_set = set(swept)
    tags: dict[str, str] = {}
    for ov in _parse(overrides):
        key = ov.key_or_group
        if _skip(key) or ov.is_delete() or ov.is_sweep_override():
            continue
        if swept_set is not None and key not in swept_set:
            continue
        tags[f"{TAG_PREFIX}{key}"] = str(ov.get_value_element_as_str())[:MAX_TAG_VALUE]
    return tags


def tag_job_run(output_dir: str | Path, overrides: Iterable[str], sweep_dir: str | Path | None) -> dict[str, str]:
    """Set :func:`sweep_tags` on the MLflow run recorded in ``<output_dir>/mlflow_run.json``; returns the
    tags set (``{}`` when the job made no MLflow run, e.g. ``logger=none`` or a config error)."""
    rec_path = Path(output_dir) / RUN_RECORD
    if not rec_path.is_file():
        return {}
    rec = json.loads(rec_path.read_text())
    tags = sweep_tags(overrides, sweep_dir=sweep_dir)
    if not tags or not rec.get("run_id"):
        return {}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=rec["tracking_uri"])
    for k, v in tags.items():
        client.set_tag(rec["run_id"], k, v)
    return tags


try:  # Hydra is a hard dependency; the guard only keeps this module importable in odd environments
    from hydra.experimental.callback import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class SweepTagsCallback(_Callback):
    """Hydra callback: after each multirun job, tag its MLflow run with the job's swept values.

    Enable with ``hydra.callbacks.sweep_tags._target_: analogtrain.report.tags.SweepTagsCallback``
    (the ``conf/sweep/`` presets do). Runs in the process that runs the job (in-process, joblib worker,
    SLURM job). Failures are logged, never raised: tags must not fail a finished run.
    """

    def on_job_end(self, config, job_return=None, **kwargs: Any) -> None:
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            if "MULTIRUN" not in str(hc.mode) or config.get("logger", {}).get("name") != "mlflow":
                return
            tags = tag_job_run(hc.runtime.output_dir, list(hc.overrides.task), Path(hc.sweep.dir).resolve())
            if tags:
                log.debug("tagged run with %s", tags)
        except Exception as e:  # noqa: BLE001
            log.warning("could not set sweep tags on the MLflow run: %s", e)
