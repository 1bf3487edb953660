"""``trainer.pipeline``: the schema of pipeline-parallel training and its validation.

The node is a field of the runner's ``TrainerConfig`` (``pipeline: PipelineConfig``); values come from
YAML / the command line, e.g. ``trainer.pipeline.mode=async trainer.pipeline.stages=3``.
This module imports nothing heavy (no torch) so the config schema module can import it.

Schedules (exact semantics in :mod:`analogtrain.pipeline.schedule`):

* ``none``  — ordinary training: the whole mini-batch goes forward, backward, then every layer updates.
* ``sync``  — GPipe: the mini-batch is split into ``micro_batches`` micro-batches; every stage runs all
  forwards, then all backwards (all with the same weight version), then one analog update per stage on
  the concatenated (x, d) of the micro-batches ("flush"). Numerically equal to ``none`` with perfect IO
  reads; with a noisy periphery each micro-batch's read draws its own IO noise (the read counter and
  the row index restart per read call), so the runs agree in distribution, not number for number.
* ``async`` — PipeDream-style 1F1B without weight stashing (Wu et al. 2024, "Pipeline gradient-based
  model training on analog in-memory accelerators", paper-claims §1.6): no flush; a stage updates right
  after each micro-batch's backward, so the forward of micro-batch t at stage s saw weights
  ``min(t, S-1-s)`` updates older than its backward (which reads the *current* weights).

Cycle model (:mod:`analogtrain.pipeline.clock`): per sample, stage s costs
``f_s = sum over its matmul layers of n_vec * mvm_cycles`` (forward), ``b_s = f_s`` (backward, the
transposed read) and ``u_s = max over its layers of n_vec * BL * pulse_cycles`` (update; the tiles of a
stage pulse in parallel, one BL-slot pulse train per update vector). ``n_vec`` is the number of vectors
one sample sends through the layer (1 for a Linear, H_out*W_out for a Conv2d, tokens for a transformer).
The defaults (a read of one vector = 32 cycles, a pulse slot = 1 cycle, so a BL = 31 update vector
costs about one read) make forward, backward and update of a layer comparable, the balanced case of
the pipeline study; set them to your hardware's ratio, or give per-stage values directly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from analogtrain.config.errors import ConfigError

__all__ = ["PipelineConfig", "PIPELINE_MODES", "validate_pipeline", "pipeline_from_config"]

PIPELINE_MODES = ("none", "sync", "async")
PREFIX = "trainer.pipeline"


@dataclass
class PipelineConfig:
    """``trainer.pipeline``: pipeline-parallel training of the model's layers across accelerator stages."""

    # none | sync (GPipe, flush per mini-batch) | async (1F1B without weight stashing, no flush)
    mode: str = "none"
    # Pipeline stages. An int S >= 1: split the model's sequential layer chain into S contiguous groups
    # with (as nearly as possible) equal numbers of weight layers (Linear/Conv/analog). Or a list of
    # groups of chain names, e.g. [[layers.fc1], [layers.fc2, layers.out]]; parameter-free layers
    # (activations, pooling, flatten) that are not listed join the group of the layer before them.
    stages: Any = 2
    # Micro-batches per mini-batch, >= 1 (split with torch.tensor_split; capped at the batch size).
    # sync: forwards of all of them before the flush; async: each one is one pipeline step and one
    # update per stage.
    micro_batches: int = 1
    # Cycles of one analog matrix-vector read (forward or backward) of one vector through a tile, > 0.
    mvm_cycles: float = 32.0
    # Cycles of one pulse slot of the pulsed update (an update vector takes BL slots), >= 0.
    pulse_cycles: float = 1.0
    # Pulse-train length used for layers without an analog tile (digital models), >= 1 (aihwkit's BL).
    digital_bl: int = 31
    # Overrides of the derived per-sample costs: null, one number for every stage, or one per stage.
    forward_cycles: Optional[Any] = None
    backward_cycles: Optional[Any] = None
    update_cycles: Optional[Any] = None
    # Keep the full per-(stage, micro-batch) event log (weight versions, clock times) in memory; the
    # per-stage staleness aggregates are always kept. For tests and figures.
    record_events: bool = False


def _get(node, key: str, default=None):
    if node is None:
        return default
    if isinstance(node, dict):
        return node.get(key, default)
    if hasattr(node, "__dataclass_fields__"):
        return getattr(node, key, default)
    return node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)


def _plain(v):
    """OmegaConf containers -> Python lists/dicts (other values unchanged)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(v, (DictConfig, ListConfig)):
            return OmegaConf.to_container(v, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return v


def pipeline_from_config(node, prefix: str = PREFIX) -> PipelineConfig:
    """DictConfig / dict / ``PipelineConfig`` / None -> a validated ``PipelineConfig``.

    Raises ``ConfigError`` naming ``<prefix>.<key>`` for unknown keys and bad values."""
    if node is None:
        cfg = PipelineConfig()
    elif isinstance(node, PipelineConfig):
        cfg = node
    else:
        known = {f.name for f in fields(PipelineConfig)}
        keys = list(node.keys())
        for k in keys:
            if k not in known:
                raise ConfigError(f"{prefix}.{k}", f"unknown key; allowed keys: {', '.join(sorted(known))}")
        cfg = PipelineConfig(**{k: _plain(_get(node, k)) for k in keys})
    validate_pipeline(cfg, prefix)
    return cfg


def _check_cycles(value, key: str) -> None:
    if value is None:
        return
    vals = value if isinstance(value, (list, tuple)) else [value]
    if not vals:
        raise ConfigError(key, "must be null, a number or a non-empty list of numbers (one per stage)")
    for v in vals:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(key, f"{v!r} is not allowed: cycles are numbers >= 0 (null = derived from the tiles)")


def validate_pipeline(cfg, prefix: str = PREFIX) -> None:
    """Range/choice checks of a ``trainer.pipeline`` node (dataclass, DictConfig or dict).

    Model-dependent checks (layer names, more stages than weight layers) happen when the executor
    splits the model (:func:`analogtrain.pipeline.stages.split_stages`), with the same key names."""
    mode = _get(cfg, "mode", "none")
    if mode not in PIPELINE_MODES:
        raise ConfigError(f"{prefix}.mode", f"'{mode}' is not allowed; choose one of {', '.join(PIPELINE_MODES)}")
    stages = _plain(_get(cfg, "stages", 2))
    if isinstance(stages, bool) or not isinstance(stages, (int, list, tuple)):
        raise ConfigError(f"{prefix}.stages", f"{stages!r} is not allowed: an int >= 1 (number of stages) or a "
                          "list of layer-name groups like [[layers.fc1], [layers.fc2, layers.out]]")
    if isinstance(stages, int):
        if stages < 1:
            raise ConfigError(f"{prefix}.stages", f"{stages} is out of range: allowed 1 <= stages")
    else:
        if not stages:
            raise ConfigError(f"{prefix}.stages", "the list of layer-name groups is empty")
        seen: set[str] = set()
        for i, g in enumerate(stages):
            g = [g] if isinstance(g, str) else g
            if not isinstance(g, (list, tuple)) or not g or not all(isinstance(n, str) for n in g):
                raise ConfigError(f"{prefix}.stages", f"group {i} ({g!r}) must be a non-empty list of layer names")
            for n in g:
                if n in seen:
                    raise ConfigError(f"{prefix}.stages", f"layer '{n}' appears in more than one group")
                seen.add(n)
    mb = _get(cfg, "micro_batches", 1)
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
        raise ConfigError(f"{prefix}.micro_batches", f"{mb!r} is out of range: allowed 1 <= micro_batches (an int)")
    mvm = _get(cfg, "mvm_cycles", 32.0)
    if isinstance(mvm, bool) or not isinstance(mvm, (int, float)) or mvm <= 0:
        raise ConfigError(f"{prefix}.mvm_cycles", f"{mvm!r} is out of range: allowed 0 < mvm_cycles")
    pc = _get(cfg, "pulse_cycles", 1.0)
    if isinstance(pc, bool) or not isinstance(pc, (int, float)) or pc < 0:
        raise ConfigError(f"{prefix}.pulse_cycles", f"{pc!r} is out of range: allowed 0 <= pulse_cycles")
    bl = _get(cfg, "digital_bl", 31)
    if isinstance(bl, bool) or not isinstance(bl, int) or bl < 1:
        raise ConfigError(f"{prefix}.digital_bl", f"{bl!r} is out of range: allowed 1 <= digital_bl (an int)")
    for key in ("forward_cycles", "backward_cycles", "update_cycles"):
        _check_cycles(_plain(_get(cfg, key)), f"{prefix}.{key}")
    n = stages if isinstance(stages, int) else len(stages)
    for key in ("forward_cycles", "backward_cycles", "update_cycles"):
        v = _plain(_get(cfg, key))
        if isinstance(v, (list, tuple)) and len(v) != n:
            raise ConfigError(f"{prefix}.{key}", f"has {len(v)} values but there are {n} stages (give one number "
                              "for all stages or one per stage)")
