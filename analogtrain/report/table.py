"""The results table: one row per cell of the sweep grid (a combination of the swept keys other than the
seed), the metric's mean ± std over the seeds (replicates) of that cell.

``std`` is the sample standard deviation (ddof = 1, as in the papers' "mean ± std over 3 seeds"); it is
NaN for a cell with a single run. Only FINISHED runs with the metric logged enter the statistics;
the others are counted in ``n_failed`` so a cell that lost seeds is visible.
"""

from __future__ import annotations

import math
from typing import Any

CELL_COLUMNS = ("mean", "std", "min", "max", "n", "n_failed", "seeds")


def cell_keys(keys: list[str], seed_key: str = "seed") -> list[str]:
    """The grouping keys of the table: every swept key except the replicate (seed) key."""
    return [k for k in keys if k != seed_key]


def aggregate(runs, keys: list[str], metric: str, seed_key: str = "seed"):
    """Per-cell statistics of ``metric`` over the runs of each cell.

    Args:
        runs: the per-run DataFrame of :class:`analogtrain.report.source.SweepRuns` (columns ``status``,
            the keys, ``metric``).
        keys: the swept keys (the seed key among them is aggregated over, not grouped by).
    Returns:
        DataFrame with the cell keys, then ``mean``, ``std``, ``min``, ``max``, ``n`` (runs in the
        statistics), ``n_failed`` (runs not FINISHED or without the metric), ``seeds`` (the seeds used,
        comma-separated). Rows are sorted by the cell keys.
    """
    import pandas as pd

    gkeys = cell_keys(keys, seed_key)
    ok = (runs["status"] == "FINISHED") & runs[metric].notna()
    rows: list[dict[str, Any]] = []
    groups = runs.groupby(gkeys, dropna=False, sort=True) if gkeys else [((), runs)]
    for cell, sub in groups:
        cell = cell if isinstance(cell, tuple) else (cell,)
        good = sub[ok.loc[sub.index]]
        vals = good[metric].astype(float)
        n = int(len(vals))
        seeds = ""
        if seed_key in sub.columns:
            seeds = ",".join(fmt_value(s) for s in good[seed_key].tolist())
        rows.append({**dict(zip(gkeys, cell)),
                     "mean": float(vals.mean()) if n else math.nan,
                     "std": float(vals.std(ddof=1)) if n > 1 else math.nan,
                     "min": float(vals.min()) if n else math.nan,
                     "max": float(vals.max()) if n else math.nan,
                     "n": n, "n_failed": int(len(sub) - n), "seeds": seeds})
    return pd.DataFrame(rows, columns=[*gkeys, *CELL_COLUMNS])


def fmt_value(v: Any) -> str:
    """A table/axis label for a swept value: floats in %g form, missing as an en dash."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def fmt_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``0.9123 ± 0.0051``; a single run (std NaN) shows only the mean; no run shows ``–``."""
    if mean is None or math.isnan(mean):
        return "–"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(cells, keys: list[str], metric: str, seed_key: str = "seed", digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of :func:`aggregate`'s output (keys, ``metric (mean ± std)``,
    ``n``, and ``failed`` when any run of the sweep did not finish)."""
    gkeys = cell_keys(keys, seed_key)
    show_failed = bool(len(cells)) and int(cells["n_failed"].sum()) > 0
    head = [*gkeys, f"{metric} (mean ± std)", "n"] + (["failed"] if show_failed else [])
    align = ["---"] * len(gkeys) + ["---:", "---:"] + (["---:"] if show_failed else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for _, row in cells.iterrows():
        cols = [fmt_value(row[k]) for k in gkeys] + [fmt_mean_std(row["mean"], row["std"], digits), str(row["n"])]
        if show_failed:
            cols.append(str(row["n_failed"]))
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"
