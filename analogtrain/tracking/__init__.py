"""Experiment tracking (MLflow): ``make_tracker(cfg, ...)``, run naming, the sweep parent-run callback.

mlflow itself is imported lazily, only when ``logger=mlflow`` runs.
"""

from __future__ import annotations

from analogtrain.tracking.mlflow_tracker import (
    MLflowTracker,
    Tracker,
    default_tracking_uri,
    flatten,
    resolve_tracking_uri,
)

__all__ = ["MLflowTracker", "Tracker", "default_tracking_uri", "flatten", "resolve_tracking_uri", "run_name"]


def run_name(cfg, choices: dict | None = None) -> str:
    """``<device>-<algo>-<model>-s<seed>`` from the Hydra group choices (e.g. ``softbounds-cttv2-mlp-s0``);
    digital runs drop the device (``digital-mlp-s0``). ``logger.run_name`` wins when set."""
    if cfg.logger.get("run_name"):
        return str(cfg.logger.run_name)
    choices = choices or {}
    algo = choices.get("algo") or cfg.algo.name
    model = choices.get("model") or cfg.model.name
    device = choices.get("device") or cfg.device.get("name") or cfg.device.get("family") or "device"
    from analogtrain.algorithms.base import ALGORITHMS

    cls = ALGORITHMS.get(cfg.algo.name)
    parts = [algo, model] if cls is not None and not cls.is_analog else [device, algo, model]
    return "-".join(str(p).replace("/", "_") for p in parts) + f"-s{cfg.seed}"
