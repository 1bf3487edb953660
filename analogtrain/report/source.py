"""Read a sweep's runs from MLflow into one table: one row per child run, one column per swept key.

Which runs (:func:`load_sweep`):

* ``parent=<run id>``: the children of that sweep parent run (tag ``mlflow.parentRunId``);
* ``experiment=<name>``: the children of every sweep parent in the experiment (so sweeps launched one
  per algorithm into one experiment make one report); runs without a parent are used when the
  experiment has no parent runs;
* neither: the most recent sweep parent in the store ("latest sweep").

A parent's children are searched in every experiment (a job may log to its own). Of the runs that share
a run directory (tag ``analogtrain.run_dir``: a job started again after it stopped before its first
checkpoint gets a new MLflow run) only the newest is used, and the report says how many it left out.

Which keys were swept (the columns the report groups by): the keys with more than one value in the
sweep definition, read from the parent's ``sweep.<key>`` params (logged by
:class:`analogtrain.tracking.callback.MLflowSweepCallback`) and the children's ``sweep.<key>`` tags
(:mod:`analogtrain.report.tags`), plus, for several parents, the keys their command lines set to
different values (``keys_between_parents``: sweeps launched one per device into one experiment); if
none of these exists, the params whose values differ between runs. A (configuration, seed) pair that
finished twice is reported in ``SweepRuns.notes``.

A run's value of key ``k``: tag ``sweep.k``, else param ``k`` (the flattened resolved config), else tag
``choice.k`` (a Hydra group such as ``algo``), else param ``k.name``. The algorithm column ``algo`` is
always present so every table and plot is per algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from analogtrain.config.errors import ConfigError
from analogtrain.report.tags import TAG_PREFIX, swept_keys

PARENT_ROLE_FILTER = "tags.`analogtrain.role` = 'sweep-parent'"
PARENT_TAG = "mlflow.parentRunId"
ALGO_KEY = "algo"
STATS = ("last", "max", "min")
# never sweep axes: bookkeeping the runner derives from other keys or from where the run lives
_NOT_AXES_PREFIXES = ("seeds.", "logger.", "hydra", "trainer.progress", "trainer.num_threads", "data.root")


@dataclass
class SweepRuns:
    """The runs of one report.

    Attributes:
        runs: one row per child run; columns ``run_id``, ``run_name``, ``status``, ``parent_run_id``,
            then one column per key of ``keys`` (floats where every value is numeric, else strings),
            then ``metric`` (float, NaN when the run did not log it).
        keys: the grouping keys in sweep order; always contains ``algo``; may contain the seed key.
        metric: the metric name (e.g. ``test/acc``); stat: ``last`` | ``max`` | ``min`` over its history.
        parents: the parent runs (MLflow ``Run`` objects); experiment_ids: where the runs were searched.
        notes: one line each: runs left out as replaced by a relaunch of their job, repeated
            (cell, seed) pairs (the same configuration run twice is counted twice).
    """

    runs: Any  # pandas.DataFrame
    keys: list[str]
    metric: str
    stat: str
    tracking_uri: str
    parents: list = field(default_factory=list)
    experiment_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the reader should know (replaced runs, repeats)


def _search_all(client, experiment_ids: list[str], filter_string: str = "", order_by=None) -> list:
    """Every run matching ``filter_string`` (MLflow pages results; follow the page tokens)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_parent(client, experiment_ids: list[str] | None = None):
    """The most recently started sweep parent run (in ``experiment_ids`` or any active experiment)."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return None
    found = client.search_runs(experiment_ids, filter_string=PARENT_ROLE_FILTER, max_results=1,
                               order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def parent_swept_keys(parent) -> list[str]:
    """Swept keys recorded on a parent run: its ``sweep.<key>`` params whose value is a Hydra sweep."""
    overrides = [f"{k[len(TAG_PREFIX):]}={v}" for k, v in parent.data.params.items() if k.startswith(TAG_PREFIX)]
    keys: list[str] = []
    for ov in overrides:  # one at a time: a value that is not valid override syntax must not hide the rest
        try:
            keys += [k for k in swept_keys([ov]) if k not in keys]
        except Exception:  # noqa: BLE001  (e.g. a quoted path; such a key is no sweep axis)
            continue
    return keys


def run_value(run, key: str) -> str | None:
    """The value of ``key`` for one run as a string (see the module docstring for the lookup order)."""
    tags, params = run.data.tags, run.data.params
    for source, k in ((tags, TAG_PREFIX + key), (params, key), (tags, f"choice.{key}"), (params, f"{key}.name")):
        if k in source:
            return source[k]
    return None


def _coerce(values: list[str | None]) -> list:
    """All numeric (or missing) -> floats; otherwise strings (``None`` stays ``None``)."""
    def num(v):
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None
        return x if math.isfinite(x) else None

    present = [v for v in values if v is not None]
    if present and all(num(v) is not None for v in present):
        return [num(v) if v is not None else math.nan for v in values]
    return [None if v is None else str(v) for v in values]


def _varying_param_keys(runs: list) -> list[str]:
    """Fallback when no sweep definition is recorded: params whose values differ between runs."""
    keys = sorted({k for r in runs for k in r.data.params})
    out = []
    for k in keys:
        if k.startswith(_NOT_AXES_PREFIXES):
            continue
        if len({r.data.params.get(k) for r in runs}) > 1:
            out.append(k)
    return out


def metric_value(client, run, metric: str, stat: str = "last") -> float:
    """The run's ``metric``: its last logged value (highest step) or the max/min over its history."""
    if stat not in STATS:
        raise ConfigError("report.stat", f"'{stat}' is not one of {', '.join(STATS)}")
    if stat == "last":
        return float(run.data.metrics.get(metric, math.nan))
    hist = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
    if not hist:
        return math.nan
    return float(max(hist) if stat == "max" else min(hist))


def load_sweep(tracking_uri: str, parent: str | None = None, experiment: str | None = None,
               metric: str = "test/acc", stat: str = "last", keys: Iterable[str] | None = None,
               seed_key: str = "seed"):
    """Collect the runs of a sweep; see the module docstring. Returns :class:`SweepRuns`.

    Args:
        keys: grouping keys to use instead of the detected swept keys (``algo`` and ``seed_key`` are
            added when the runs have them).
    Raises:
        ConfigError: unknown parent run / experiment, or no runs found.
    """
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    parents: list = []
    if parent:
        try:
            parents = [client.get_run(parent)]
        except Exception as e:  # noqa: BLE001
            raise ConfigError("report.parent", f"no run '{parent}' in {tracking_uri} ({type(e).__name__})") from e
        exp_ids = [parents[0].info.experiment_id]
    elif experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise ConfigError("report.experiment", f"no experiment '{experiment}' in {tracking_uri}; "
                              f"experiments: {', '.join(names) or '(none)'}")
        exp_ids = [exp.experiment_id]
        parents = _search_all(client, exp_ids, PARENT_ROLE_FILTER, order_by=["attributes.start_time ASC"])
    else:
        latest = latest_parent(client)
        if latest is None:
            raise ConfigError("report.parent", f"no sweep parent run in {tracking_uri}; run a sweep "
                              "(`analogtrain -m sweep=asym_skew`) or pass --experiment")
        parents, exp_ids = [latest], [latest.info.experiment_id]

    notes: list[str] = []
    given = list(keys) if keys is not None else None
    if parents:
        # a job may log to another experiment than its parent (logger.experiment or experiment=... swept)
        all_ids = [e.experiment_id for e in client.search_experiments()] or exp_ids
        children = []
        for p in parents:
            children += _search_all(client, all_ids, f"tags.`{PARENT_TAG}` = '{p.info.run_id}'")
    else:  # an experiment of plain runs (no multirun parent)
        children = [r for r in _search_all(client, exp_ids)
                    if r.data.tags.get("analogtrain.role") not in ("sweep-parent", "report")]
    if not children:
        where = f"parent run {parents[0].info.run_id}" if len(parents) == 1 else f"experiment(s) {exp_ids}"
        raise ConfigError("report.parent", f"{where} has no child runs in {tracking_uri}")
    children, replaced = newest_per_run_dir(children)
    if replaced:
        notes.append(f"{replaced} run(s) left out: an older MLflow run of a job whose run directory was "
                     "started again (a relaunch after a stop before its first checkpoint)")

    if keys is None:
        detected: list[str] = []
        for p in parents:
            detected += [k for k in parent_swept_keys(p) if k not in detected]
        for r in children:
            detected += [k[len(TAG_PREFIX):] for k in r.data.tags
                         if k.startswith(TAG_PREFIX) and k[len(TAG_PREFIX):] not in detected]
        # sweeps launched into one experiment with different fixed values (device=a, then device=b):
        # a key fixed within each sweep but not across them is an axis too, or the report would
        # average different configurations as if they were seeds
        detected += [k for k in keys_between_parents(parents, children) if k not in detected]
        if not detected:
            detected = _varying_param_keys(children)
        keys = detected
    keys = [ALGO_KEY] + [k for k in dict.fromkeys(keys) if k != ALGO_KEY]  # tables and plots per algorithm
    if seed_key not in keys and any(run_value(r, seed_key) is not None for r in children):
        keys.append(seed_key)
    # a group swept through its name ("algo") and the same value as a param ("algo.name") are one axis
    keys = [k for k in keys if not (k.endswith(".name") and k[: -len(".name")] in keys)]

    table: dict[str, list] = {
        "run_id": [r.info.run_id for r in children],
        "run_name": [r.info.run_name for r in children],
        "status": [r.info.status for r in children],
        "parent_run_id": [r.data.tags.get(PARENT_TAG) for r in children],
    }
    for k in list(keys):
        values = [run_value(r, k) for r in children]
        if all(v is None for v in values):  # e.g. a swept key the runs do not record: nothing to group by
            if given is not None and k in given:
                raise ConfigError("report.keys", f"'{k}': no run of this sweep records it (a config key "
                                  "such as device.asymmetry, or a Hydra group such as algo)")
            keys.remove(k)
            continue
        table[k] = _coerce(values)
    table[metric] = [metric_value(client, r, metric, stat) for r in children]
    df = pd.DataFrame(table)
    df = df.sort_values([k for k in keys] + ["run_id"], kind="stable", na_position="last").reset_index(drop=True)
    if seed_key in keys:
        fin = df[df["status"] == "FINISHED"]
        rep = int(fin.duplicated(subset=keys, keep="first").sum())
        if rep:
            notes.append(f"{rep} finished run(s) repeat a (configuration, {seed_key}) pair of another run "
                         "(the same sweep launched twice?): each counts in its cell's statistics; pass "
                         "--parent to report one sweep")
    return SweepRuns(runs=df, keys=keys, metric=metric, stat=stat, tracking_uri=tracking_uri,
                     parents=parents, experiment_ids=exp_ids, notes=notes)


def newest_per_run_dir(runs: list) -> tuple[list, int]:
    """The runs with, among runs that share an ``analogtrain.run_dir`` tag (a job started again in its
    run directory after it stopped before its first checkpoint gets a new MLflow run), only the most
    recently started one. Returns (runs, how many were left out)."""
    newest: dict[str, Any] = {}
    for r in runs:
        d = r.data.tags.get("analogtrain.run_dir")
        if d is not None and (d not in newest or r.info.start_time > newest[d].info.start_time):
            newest[d] = r
    keep = [r for r in runs if r.data.tags.get("analogtrain.run_dir") is None
            or newest[r.data.tags["analogtrain.run_dir"]] is r]
    return keep, len(runs) - len(keep)


def keys_between_parents(parents: list, children: list) -> list[str]:
    """Keys set on the command line of some sweep parent (param ``sweep.<key>``) whose value differs
    between the parents, or which only some parents set, and whose recorded value differs between the
    child runs (so a key spelled out in one sweep with its default value is no axis)."""
    if len(parents) < 2:
        return []
    per_parent = []
    for p in parents:
        sw = {k[len(TAG_PREFIX):]: v for k, v in p.data.params.items() if k.startswith(TAG_PREFIX)}
        per_parent.append({k: v for k, v in sw.items() if not k.startswith(_NOT_AXES_PREFIXES)})
    out = []
    for k in dict.fromkeys(k for d in per_parent for k in d):
        vals = [d.get(k) for d in per_parent]
        if len(set(vals)) < 2:
            continue
        recorded = {run_value(r, k) for r in children} - {None}
        if len(recorded) > 1:
            out.append(k)
    return out
