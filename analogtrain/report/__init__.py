"""Sweep results from MLflow: the table (mean ± std over seeds per grid cell), heatmaps and line plots.

Entry points: the ``analogtrain-report`` command (:mod:`analogtrain.report.cli`), or in Python::

    from analogtrain.report import load_sweep, write_report
    sweep = load_sweep("sqlite:////abs/outputs/mlflow.db", parent=run_id, metric="test/acc")
    report = write_report(sweep, "outputs/reports/my_sweep")   # report.cells, report.markdown

:mod:`analogtrain.report.tags` tags multirun jobs with their swept values (``sweep.<key>``).
Heavy imports (mlflow, pandas, matplotlib) happen inside the functions' modules, on use.
"""

from __future__ import annotations

from analogtrain.report.tags import SweepTagsCallback, sweep_tags, swept_keys

__all__ = ["SweepTagsCallback", "sweep_tags", "swept_keys", "load_sweep", "write_report", "log_report", "aggregate"]


def __getattr__(name: str):  # lazy: keep `import analogtrain.report` light (no pandas/matplotlib)
    if name == "load_sweep":
        from analogtrain.report.source import load_sweep

        return load_sweep
    if name in ("write_report", "log_report"):
        from analogtrain.report import build

        return getattr(build, name)
    if name == "aggregate":
        from analogtrain.report.table import aggregate

        return aggregate
    raise AttributeError(name)
