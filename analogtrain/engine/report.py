"""End-of-run outputs in the run directory: curves PNG, history CSV, summary JSON, console table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from analogtrain.utils.logging import console


def plot_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path | None:
    """Loss (log scale) and accuracy vs epoch for train/val/test; returns the PNG path (None if empty)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [m["epoch"] for m in history]
    has_acc = any("train/acc" in m or "val/acc" in m for m in history)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5, 3.6), squeeze=False)
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        for ax, metric in zip(axes[0], ("loss", "acc")):
            key = "train/loss_epoch" if (split, metric) == ("train", "loss") else f"{split}/{metric}"
            pts = [(e, m[key]) for e, m in zip(ep, history) if key in m]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=split)
    axes[0][0].set_ylabel("loss")
    if all(m.get("train/loss_epoch", 1) > 0 for m in history):
        axes[0][0].set_yscale("log")
    if has_acc:
        axes[0][1].set_ylabel("accuracy")
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_history(history: list[dict[str, float]], path: Path) -> Path:
    keys = sorted({k for m in history for k in m}, key=lambda k: (k != "epoch", k))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    return path


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return path


def print_summary(summary: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(summary):
        v = summary[k]
        if k.startswith(("train/", "val/", "test/", "best/", "perf/steps_per_s")) or k in (
                "status", "epoch", "global_step", "run_dir", "mlflow_run_id"):
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console().print(table)
