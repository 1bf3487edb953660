"""Checkpoints for auto-resume: ``<run_dir>/checkpoints/last.pt``, written atomically after every epoch.

Content (a dict, ``torch.save``d)::

    model        model.state_dict()       (analog tile state lives in module buffers: A, C, H, choppers,
                                           RNG offsets -- the algorithm contract guarantees completeness)
    optimizer    optimizer.state_dict()   (momentum buffers, param-group lrs)
    epoch        epochs completed (the next epoch to run is this number, 0-based)
    global_step  optimizer steps done
    history      list of per-epoch metric dicts (for curves and the summary)
    rng          Python / NumPy / torch (CUDA) global RNG states
    mlflow_run_id, tracking_uri   the MLflow run to continue
    fingerprint  the config keys that must not change across a resume
    finished     True once the last epoch completed

kill -9 during the write leaves the previous checkpoint intact (write to a temp file, fsync, rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from analogtrain.config.errors import ConfigError

# keys that may change between the original run and a resumed one (bookkeeping, not the experiment)
RESUME_MUTABLE = (
    "trainer.epochs", "trainer.max_steps", "trainer.progress", "trainer.resume", "trainer.checkpoint",
    "trainer.num_threads", "trainer.accelerator", "trainer.log_every_n_steps", "data.root", "data.download",
    "data.eval_batch_size", "logger", "trainer.objective",
)


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    # our own file (RNG states hold numpy arrays/tuples), so the full unpickler is needed
    return torch.load(path, map_location="cpu", weights_only=False)


def fingerprint(cfg) -> dict[str, Any]:
    """Flattened resolved config without the keys a resume may change."""
    from analogtrain.tracking import flatten

    flat = flatten(OmegaConf.to_container(cfg, resolve=True))
    return {k: v for k, v in flat.items()
            if not any(k == m or k.startswith(m + ".") for m in RESUME_MUTABLE)}


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written by a different experiment config."""
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        shown = ", ".join(f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in diff[:5])
        more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
        raise ConfigError(
            "trainer.resume", f"{path} was written by a different config: {shown}{more}; use another run "
            f"directory (hydra.run.dir=...) or trainer.resume=false to start over")
