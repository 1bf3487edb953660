"""Range and choice checks of the composed config, run by ``run.train`` before any work.

Types and unknown keys are already enforced by the structured-config schemas at composition time
(:mod:`analogtrain.config.schema`); this module checks what a type cannot express and delegates the
groups owned by others: ``tile`` (``validate_tile``), ``device`` (``device_from_config``) and ``algo``
(``ALGORITHMS[cfg.algo.name].validate``). Every failure is a :class:`ConfigError` naming the dotted key
and what is allowed.
"""

from __future__ import annotations

import os

from analogtrain.config import schema as S
from analogtrain.config.errors import ConfigError


def check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, f"'{value}' is not allowed; choose one of {', '.join(map(str, allowed))}")


def check_range(key: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    """``lo <= value <= hi`` (``<`` where open); the message states the allowed interval."""
    if value is None:
        raise ConfigError(key, "must be set (got null)")
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        name = key.rsplit(".", 1)[-1]
        lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
        raise ConfigError(key, f"{value} is out of range: allowed {lo_s}{name}{hi_s}")


def validate_trainer(t, prefix: str = "trainer") -> None:
    check_range(f"{prefix}.epochs", t.epochs, lo=1)
    check_range(f"{prefix}.max_steps", t.max_steps, lo=0)
    check_range(f"{prefix}.lr", t.lr, lo=0.0, lo_open=True)
    check_choice(f"{prefix}.lr_schedule", t.lr_schedule, S.LR_SCHEDULES)
    check_range(f"{prefix}.lr_step_size", t.lr_step_size, lo=1)
    check_range(f"{prefix}.lr_gamma", t.lr_gamma, lo=0.0, hi=1.0, lo_open=True)
    check_range(f"{prefix}.lr_min", t.lr_min, lo=0.0, hi=t.lr)
    check_choice(f"{prefix}.loss", t.loss, ("auto", "cross_entropy", "mse"))
    check_range(f"{prefix}.log_every_n_steps", t.log_every_n_steps, lo=1)
    check_choice(f"{prefix}.progress", t.progress, S.PROGRESS_MODES)
    check_choice(f"{prefix}.accelerator", t.accelerator, S.ACCELERATORS)
    check_range(f"{prefix}.num_threads", t.num_threads, lo=0)
    if "pipeline" in t:
        from analogtrain.pipeline.config import validate_pipeline

        validate_pipeline(t.pipeline, prefix=f"{prefix}.pipeline")
    if t.accelerator == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{prefix}.accelerator", "'cuda' requested but no CUDA GPU is available; "
                              "choose one of auto, cpu")


def validate_data(d, prefix: str = "data") -> None:
    from analogtrain.data import DATASETS

    check_choice(f"{prefix}.name", d.name, sorted(DATASETS))
    check_range(f"{prefix}.batch_size", d.batch_size, lo=1)
    check_range(f"{prefix}.eval_batch_size", d.eval_batch_size, lo=1)
    check_range(f"{prefix}.val_fraction", d.val_fraction, lo=0.0, hi=1.0, hi_open=True)
    check_range(f"{prefix}.test_fraction", d.test_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_range(f"{prefix}.limit_train", d.limit_train, lo=0)
    check_range(f"{prefix}.limit_test", d.limit_test, lo=0)
    check_range(f"{prefix}.pad_to", d.pad_to, lo=0)
    if "resize" in d:
        check_range(f"{prefix}.resize", d.resize, lo=0)
    if d.name == "synthetic":
        for k in ("n_in", "n_out", "n_train", "n_test"):
            check_range(f"{prefix}.{k}", d[k], lo=1)
        check_range(f"{prefix}.noise_std", d.noise_std, lo=0.0)
        check_range(f"{prefix}.teacher_std", d.teacher_std, lo=0.0, lo_open=True)
    elif "n_in" in d:
        raise ConfigError(f"{prefix}.name", f"'{d.name}' with the synthetic schema; use data={d.name}")


def validate_model(m, prefix: str = "model") -> None:
    from analogtrain.models import MODELS

    check_choice(f"{prefix}.name", m.name, sorted(MODELS))
    if "activation" in m:
        check_choice(f"{prefix}.activation", m.activation, S.ACTIVATIONS)
    if "out_activation" in m:
        check_choice(f"{prefix}.out_activation", m.out_activation, S.ACTIVATIONS)
    for key in ("hidden_sizes", "channels", "fc_sizes", "depths", "num_heads"):
        if key in m:
            for i, v in enumerate(m[key]):
                check_range(f"{prefix}.{key}[{i}]", v, lo=1)
    if m.get("kernel_size") is not None:
        check_range(f"{prefix}.kernel_size", m.kernel_size, lo=1)
    for key in ("patch_size", "window_size", "embed_dim"):
        if key in m:
            check_range(f"{prefix}.{key}", m[key], lo=1)


def validate_init(cfg) -> None:
    """``stage`` and the ``init`` node (transfer learning, :mod:`analogtrain.engine.transfer`). Whether
    ``init.checkpoint`` exists and fits the model is checked by ``run.train`` before the model is built."""
    stage = cfg.get("stage", "train")
    check_choice("stage", stage, S.STAGES)
    init = cfg.get("init")
    if init is not None and init.get("programming_noise") is not None:
        check_range("init.programming_noise", init.programming_noise, lo=0.0)
    if stage == "finetune" and (init is None or not init.get("checkpoint")):
        raise ConfigError("init.checkpoint", "stage=finetune needs the weights to start from: a weights file, "
                          "a pretrain run directory, an MLflow run id or 'latest' (e.g. init.checkpoint=latest)")
    if stage == "pretrain":
        from analogtrain.algorithms.base import ALGORITHMS

        cls = ALGORITHMS.get(cfg.algo.name)
        if cls is not None and getattr(cls, "is_analog", False):
            raise ConfigError("stage", f"stage=pretrain trains digitally, but algo={cfg.algo.name} is analog: "
                              "use algo=digital (then fine-tune in analog with stage=finetune)")


def validate_logger(lg, prefix: str = "logger") -> None:
    check_choice(f"{prefix}.name", lg.name, S.LOGGERS)
    if lg.name == "mlflow":
        if not lg.experiment:
            raise ConfigError(f"{prefix}.experiment", "must be a non-empty experiment name")
        if lg.tracking_uri:
            check_tracking_uri(lg.tracking_uri, f"{prefix}.tracking_uri")
        elif os.environ.get("MLFLOW_TRACKING_URI"):  # (null: the environment's store is the one used)
            check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")


def check_tracking_uri(uri: str, key: str) -> None:
    """ConfigError naming ``key`` for a tracking URI that MLflow 3 would only reach with a traceback: a plain
    path or ``file:`` (the file store, refused unless ``MLFLOW_ALLOW_FILE_STORE``)."""
    file_store = uri.startswith("file:") or "://" not in uri
    if file_store and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        hint = f"sqlite:///{uri}" if uri.endswith(".db") and "://" not in uri else "sqlite:///<path>.db"
        raise ConfigError(key, f"'{uri}': MLflow 3 refuses the file store; use {hint}, an http(s):// "
                          "server, or null for outputs/mlflow.db")


def device_validator():
    """``analogtrain.devices.device_from_config`` once the devices package provides it, else None."""
    try:
        from analogtrain.devices import device_from_config
    except ImportError:  # devices package not landed yet: the device node is only schema-checked
        return None
    return device_from_config


def check_unknown_keys(node, prefix: str = "") -> None:
    """Keys appended with ``+key=value`` bypass the closed schemas; reject any key of a schema-typed node
    that its dataclass does not define (recursively, so other owners' groups are covered too)."""
    import dataclasses

    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return
    typ = OmegaConf.get_type(node)
    if typ is not None and dataclasses.is_dataclass(typ):
        allowed = {f.name for f in dataclasses.fields(typ)}
        extra = sorted(set(node.keys()) - allowed)
        if extra:
            raise ConfigError(f"{prefix}{extra[0]}", f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
    for k in node.keys():
        child = node._get_node(k)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_unknown_keys(child, f"{prefix}{k}.")


def check_update_mode_device(update_mode: str, device_cfg, key: str = "tile.update_mode",
                             device_key: str = "device") -> None:
    """``tile.update_mode: aggregated`` needs a linear-step family device (KIND_LINEAR: the per-pulse map
    is affine in w, which is what makes the n-pulse chain's mean and variance closed-form). ``device_cfg``
    is a resolved device dataclass (``device_from_config``); ConfigError naming ``key`` otherwise."""
    if update_mode != "aggregated":
        return
    from analogtrain.devices import FAMILIES
    from analogtrain.devices import params as P

    kind = getattr(type(device_cfg), "KIND", None)
    if kind != P.KIND_LINEAR:
        linear = sorted(n for n, c in FAMILIES.items() if getattr(c, "KIND", None) == P.KIND_LINEAR)
        name = getattr(device_cfg, "name", None) or getattr(device_cfg, "family", type(device_cfg).__name__)
        raise ConfigError(key, f"'aggregated' needs a linear-step family device: {', '.join(linear)} "
                          f"(or a preset of one); {device_key} is '{name}'. Choose update_mode pulsed, "
                          "mean_count or expected for this device")


def _check_aggregated(cfg, device_cfg) -> None:
    """``check_update_mode_device`` for the main device and, for transfer algorithms, the A and C devices
    (``algo.fast_device`` / ``algo.device_c`` may name another family)."""
    tile = cfg.get("tile")
    mode = tile.get("update_mode", "pulsed") if tile is not None else "pulsed"
    if mode != "aggregated":
        return
    check_update_mode_device(mode, device_cfg)
    algo = cfg.get("algo")
    if algo is not None and ("fast_device" in algo or "device_c" in algo):
        from analogtrain.algorithms.transfer import resolve_devices

        dev_a, dev_c = resolve_devices(cfg, algo)
        check_update_mode_device(mode, dev_a, device_key="algo.fast_device")
        check_update_mode_device(mode, dev_c, device_key="algo.device_c")


def validate_config(cfg) -> None:
    """Validate the whole composed config; raise ``ConfigError`` naming the first bad key."""
    check_unknown_keys(cfg)
    check_range("seed", cfg.seed, lo=0)
    validate_trainer(cfg.trainer)
    validate_data(cfg.data)
    validate_model(cfg.model)
    validate_logger(cfg.logger)

    from analogtrain.tiles.config import validate_tile

    validate_tile(cfg.tile)
    dev = device_validator()
    device_cfg = None
    if dev is not None:
        device_cfg = dev(cfg.device, prefix="device")

    import analogtrain.algorithms  # noqa: F401  (registers every algorithm)
    from analogtrain.algorithms.base import ALGORITHMS

    check_choice("algo.name", cfg.algo.name, sorted(ALGORITHMS))
    ALGORITHMS[cfg.algo.name].validate(cfg)
    if device_cfg is not None and getattr(ALGORITHMS[cfg.algo.name], "is_analog", False):
        _check_aggregated(cfg, device_cfg)  # tile × device: after both (and the algorithm) validated
    validate_init(cfg)
