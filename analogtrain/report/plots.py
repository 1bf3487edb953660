"""Figures of the results table (matplotlib, Agg backend: no display needed).

* :func:`heatmaps`: the metric's cell mean over two numeric swept keys (default ``device.asymmetry`` on
  x, ``device.skew`` on y), one panel per algorithm (and per value of any further swept key), one shared
  colour scale so panels compare; each square is annotated ``mean ± std``.
* :func:`line_plots`: the metric against one numeric swept key, one line per algorithm with ± std error
  bars, one panel per value of the other swept keys (e.g. accuracy vs asymmetry, a panel per skew).

Both take the cell table of :func:`analogtrain.report.table.aggregate` and write one PNG.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: sweeps run on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402

from analogtrain.report.table import fmt_value  # noqa: E402

DEFAULT_X = "device.asymmetry"
DEFAULT_Y = "device.skew"
MAX_COLS = 4


def varying(cells, keys: list[str]) -> list[str]:
    """Keys of ``keys`` with more than one distinct value in the table."""
    return [k for k in keys if k in cells.columns and cells[k].nunique(dropna=False) > 1]


def numeric_keys(cells, keys: list[str]) -> list[str]:
    """Varying keys whose values are all numbers (the possible plot axes)."""
    import pandas as pd

    return [k for k in varying(cells, keys) if pd.api.types.is_float_dtype(cells[k])]


def choose_axes(cells, keys: list[str], x: str | None = None, y: str | None = None) -> tuple[str | None, str | None]:
    """Heatmap axes: the given ones, else asymmetry/skew when swept, else the first numeric swept keys."""
    nums = numeric_keys(cells, keys)
    pref = [k for k in (x, y, DEFAULT_X, DEFAULT_Y) if k and k in nums]
    order = list(dict.fromkeys(pref + nums))
    return (order[0] if order else None), (order[1] if len(order) > 1 else None)


def _panels(cells, facet_keys: list[str]) -> list[tuple[str, object]]:
    """``(title, sub-table)`` per combination of the facet keys' values (one panel if none)."""
    if not facet_keys:
        return [("", cells)]
    out = []
    for combo, sub in cells.groupby(facet_keys, dropna=False, sort=True):
        combo = combo if isinstance(combo, tuple) else (combo,)
        out.append((", ".join(f"{k}={fmt_value(v)}" for k, v in zip(facet_keys, combo)), sub))
    return out


def _grid(n: int, w: float, h: float, sharey: bool = False):
    ncols = min(n, MAX_COLS)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False, layout="constrained",
                             sharey=sharey)
    flat = list(itertools.chain.from_iterable(axes))
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def heatmaps(cells, x: str, y: str, facet_keys: list[str], metric: str, path: str | Path,
             title: str = "") -> Path:
    """Heatmap of the cell means over ``x`` (columns) × ``y`` (rows, increasing upwards); one panel per
    combination of ``facet_keys``. Missing cells are blank."""
    import numpy as np

    panels = _panels(cells, facet_keys)
    xs = sorted(cells[x].dropna().unique())
    ys = sorted(cells[y].dropna().unique())
    finite = cells["mean"].dropna()
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5e-3, vmax + 0.5e-3
    fig, axes = _grid(len(panels), 0.9 * len(xs) + 2.2, 0.6 * len(ys) + 1.8)
    im = None
    for ax, (ptitle, sub) in zip(axes, panels):
        mean = np.full((len(ys), len(xs)), np.nan)
        std = np.full_like(mean, np.nan)
        for _, row in sub.iterrows():
            if row[x] in xs and row[y] in ys:
                i, j = ys.index(row[y]), xs.index(row[x])
                mean[i, j], std[i, j] = row["mean"], row["std"]
        im = ax.imshow(np.ma.masked_invalid(mean), origin="lower", cmap="viridis", vmin=vmin, vmax=vmax,
                       aspect="auto")
        for i, j in itertools.product(range(len(ys)), range(len(xs))):
            if not np.isnan(mean[i, j]):
                txt = f"{mean[i, j]:.3f}" + ("" if np.isnan(std[i, j]) else f"\n±{std[i, j]:.3f}")
                dark = (mean[i, j] - vmin) / (vmax - vmin) < 0.5
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.set_xticks(range(len(xs)), [fmt_value(v) for v in xs])
        ax.set_yticks(range(len(ys)), [fmt_value(v) for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(ptitle, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes, label=metric, shrink=0.9)
    fig.suptitle(title or f"{metric}: mean over seeds", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def line_plots(cells, x: str, hue: str | None, facet_keys: list[str], metric: str, path: str | Path,
               title: str = "") -> Path:
    """``metric`` (mean, ± std error bars) against ``x``; one line per value of ``hue`` (the algorithm),
    one panel per combination of ``facet_keys``."""
    panels = _panels(cells, facet_keys)
    fig, axes = _grid(len(panels), 4.2, 3.2, sharey=True)  # one y scale: panels compare
    for ax, (ptitle, sub) in zip(axes, panels):
        groups = sub.groupby(hue, dropna=False, sort=True) if hue else [(None, sub)]
        for label, line in groups:
            line = line.sort_values(x)
            err = line["std"].fillna(0.0)
            ax.errorbar(line[x], line["mean"], yerr=err, marker="o", ms=4, capsize=3,
                        label=fmt_value(label) if hue else metric)
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        ax.set_title(ptitle, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title=hue, title_fontsize=7)
    fig.suptitle(title or f"{metric} vs {x} (mean ± std over seeds)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
