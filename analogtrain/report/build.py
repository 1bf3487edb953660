"""Write a sweep report (CSV, Markdown, PNG) into a folder and log it to the sweep's MLflow parent run.

Files written by :func:`write_report` into ``out_dir``:

    runs.csv      one row per child run: run id/name, status, swept values, the metric
    table.csv     one row per cell: swept values (without the seed), mean, std, min, max, n, n_failed, seeds
    table.md      the cell table in Markdown (``metric (mean ± std)`` per cell)
    heatmap.png   metric over the two numeric swept keys (asymmetry × skew), a panel per algorithm (+ rest)
    vs_<key>.png  metric against each numeric swept key, a line per algorithm, a panel per other values
    report.md     header (source, metric, runs) + the table + links to the figures
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from analogtrain.report.plots import choose_axes, heatmaps, line_plots, numeric_keys, varying
from analogtrain.report.source import ALGO_KEY, SweepRuns
from analogtrain.report.table import fmt_value, aggregate, cell_keys, to_markdown

log = logging.getLogger(__name__)

ARTIFACT_DIR = "report"  # artifact sub-folder of the parent run


@dataclass
class Report:
    """What :func:`write_report` produced: the cell table (DataFrame), its Markdown, the files."""

    cells: object
    markdown: str
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    logged_to: str | None = None  # MLflow run id the files were logged to


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def write_report(sweep: SweepRuns, out_dir: str | Path, seed_key: str = "seed", x: str | None = None,
                 y: str | None = None, hue: str = ALGO_KEY, digits: int = 4) -> Report:
    """Aggregate ``sweep`` and write the files listed in the module docstring. Figures whose axes do not
    exist (e.g. a heatmap of a one-key sweep) are skipped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metric = sweep.metric
    cells = aggregate(sweep.runs, sweep.keys, metric, seed_key)
    gkeys = cell_keys(sweep.keys, seed_key)
    files: list[Path] = []

    runs_csv = out / "runs.csv"
    sweep.runs.to_csv(runs_csv, index=False)
    table_csv = out / "table.csv"
    cells.assign(metric=metric, stat=sweep.stat).to_csv(table_csv, index=False)
    md_table = to_markdown(cells, sweep.keys, metric, seed_key, digits)
    table_md = out / "table.md"
    table_md.write_text(md_table)
    files += [runs_csv, table_csv, table_md]

    figures: list[Path] = []
    hue_key = hue if hue in gkeys else None
    # keys with one value in the whole table (e.g. the algorithm of a one-algorithm sweep) go in the title
    fixed = [k for k in gkeys if k not in varying(cells, gkeys) and len(cells)]
    fixed_s = ", ".join(f"{k}={fmt_value(cells[k].iloc[0])}" for k in fixed)
    suffix = f" [{fixed_s}]" if fixed_s else ""
    xk, yk = choose_axes(cells, gkeys, x, y)
    if xk and yk:
        facets = [k for k in varying(cells, gkeys) if k not in (xk, yk)]
        figures.append(heatmaps(cells, xk, yk, facets, metric, out / "heatmap.png",
                                title=f"{metric} ({sweep.stat} value), mean ± std over {seed_key}{suffix}"))
    for k in numeric_keys(cells, gkeys):
        facets = [f for f in varying(cells, gkeys) if f not in (k, hue_key)]
        figures.append(line_plots(cells, k, hue_key, facets, metric, out / f"vs_{_slug(k)}.png",
                                  title=f"{metric} vs {k}, mean ± std over {seed_key}{suffix}"))
    files += figures

    n_runs = len(sweep.runs)
    n_ok = int(cells["n"].sum()) if len(cells) else 0
    src = (f"parent run `{sweep.parents[0].info.run_id}` ({sweep.parents[0].info.run_name})"
           if len(sweep.parents) == 1 else f"{len(sweep.parents)} sweep parent runs in experiment(s) "
           f"{', '.join(sweep.experiment_ids)}" if sweep.parents else f"experiment(s) {', '.join(sweep.experiment_ids)}")
    lines = [f"# Sweep report: {metric}", "",
             f"- source: {src} in `{sweep.tracking_uri}`",
             f"- metric: `{metric}` ({sweep.stat} value of each run); mean ± sample std (ddof 1) over `{seed_key}`",
             f"- swept keys: {', '.join(f'`{k}`' for k in sweep.keys)}",
             f"- runs: {n_runs} ({n_ok} finished with the metric, {n_runs - n_ok} not)", "",
             md_table]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    report_md = out / "report.md"
    report_md.write_text("\n".join(lines) + "\n")
    files.append(report_md)
    return Report(cells=cells, markdown=md_table, out_dir=out, files=files)


def log_report(report: Report, sweep: SweepRuns, run_id: str | None = None) -> str:
    """Log the report's files as artifacts (``report/``) of ``run_id``; default: the sweep's parent run,
    or, when the report spans several parents, a new run ``sweep-report`` (tag ``analogtrain.role`` =
    ``report``) in the first experiment. Returns the run id used."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sweep.tracking_uri)
    if run_id is None and len(sweep.parents) == 1:
        run_id = sweep.parents[0].info.run_id
    created = False
    if run_id is None:
        run = client.create_run(sweep.experiment_ids[0], run_name=f"sweep-report-{_slug(sweep.metric)}",
                                tags={"analogtrain.role": "report", "analogtrain.report.parents":
                                      ",".join(p.info.run_id for p in sweep.parents)[:5000]})
        run_id, created = run.info.run_id, True
    for f in report.files:
        client.log_artifact(run_id, str(f), ARTIFACT_DIR)
    client.set_tag(run_id, "analogtrain.report", f"{ARTIFACT_DIR}/report.md ({sweep.metric})")
    if created:
        client.set_terminated(run_id, "FINISHED")
    report.logged_to = run_id
    return run_id
