"""The ``analogtrain`` command: Hydra composes ``conf/`` (installed as ``pkg://analogtrain.conf``) and
calls :func:`analogtrain.run.train`.

    analogtrain                                   # default job
    analogtrain algo=digital model=lenet trainer.epochs=3
    analogtrain -m seed=0,1,2 hydra/launcher=parallel
    analogtrain --cfg job | --help | --info

Bad input (unknown key, wrong type, out-of-range value, unknown group option, missing data) prints one
line ``analogtrain: error: <key>: <what is allowed>`` and exits with status 2 before any work; a
diverged run (NaN/inf loss) exits 1, an interrupted one 130. ``HYDRA_FULL_ERROR=1`` shows full tracebacks.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from analogtrain.config.errors import ConfigError
from analogtrain.config.schema import register_configs

CONFIG_PATH = "pkg://analogtrain.conf"
CONFIG_NAME = "train"
EXIT_CONFIG = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


_RUN_ERROR: list[BaseException] = []  # a single run's expected failure, reported by main()


def _task(cfg: DictConfig) -> Any:
    """The Hydra task: one run; returns the objective (``trainer.objective``, ``auto`` resolved) for sweepers.

    In a single run, expected failures (bad config, missing data, diverged loss) are handed to
    :func:`main` (one-line message, exit status) instead of Hydra's report; in a multirun they propagate,
    so Hydra finishes the other jobs of the batch and then names the failed job's overrides.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from analogtrain.engine.trainer import TrainingDiverged
    from analogtrain.run import hydra_context, restore_hydra_files, train

    ctx = hydra_context()
    try:
        summary = train(cfg, hydra_ctx=ctx)
    except (ConfigError, TrainingDiverged) as e:
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        if isinstance(e, ConfigError) and not multirun:
            restore_hydra_files(ctx)  # a refused start leaves the run dir as it was (or no junk dir)
        if multirun or os.environ.get("ANALOGTRAIN_FULL_ERROR") == "1":
            raise
        _RUN_ERROR.append(e)
        return None
    return summary.get(summary["objective"])  # (trainer.objective, auto resolved)


# --------------------------------------------------------------------------------- error messages


def _schema_fields(obj_type) -> dict[str, str] | None:
    if obj_type is not None and dataclasses.is_dataclass(obj_type):
        return {f.name: (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)))
                for f in dataclasses.fields(obj_type)}
    return None


def _omegaconf_error(e) -> str | None:
    """One line for an OmegaConf key/type error: the dotted key and the allowed keys or type."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    if not isinstance(e, OmegaConfBaseException):
        return None
    first = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "config"
    obj_type = getattr(e, "object_type", None)
    schema = _schema_fields(obj_type)
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        allowed = sorted(schema) if schema else None
        if allowed is None and getattr(e, "parent_node", None) is not None:
            try:
                allowed = sorted(str(k) for k in e.parent_node.keys())
            except Exception:
                allowed = None
        tail = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return f"{key}: unknown key{tail}"
    if isinstance(e, ValidationError):
        leaf = str(key).rsplit(".", 1)[-1]
        typ = schema.get(leaf) if schema else None
        return f"{key}: {first}" + (f" (allowed: {typ})" if typ else "")
    return f"{key}: {first}"


def format_error(e: BaseException) -> str:
    """Turn a composition/validation exception into the one-line message the CLI prints."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(e, ConfigError):
        return str(e)
    if isinstance(e, MissingConfigException):
        msg = str(e).strip().splitlines()[0]
        missing = e.missing_cfg_file or ""
        if e.options:
            group, _, opt = str(missing).rpartition("/")
            options = sorted(o for o in e.options if not o.endswith("_schema"))
            return f"{group}={opt}: unknown option; choose one of {', '.join(options)}"
        return msg
    # walk the cause chain to the OmegaConf error that names the key
    c: BaseException | None = e
    while c is not None:
        line = _omegaconf_error(c)
        if line:
            return line
        c = c.__cause__ or c.__context__
    if isinstance(e, (ConfigCompositionException, OverrideParseException)):
        return " ".join(str(e).split())
    return " ".join(str(e).split())


def _is_config_error(e: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    return isinstance(e, (ConfigError, HydraException, OmegaConfBaseException))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (``analogtrain``); returns the process exit status."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    register_configs()
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's multi-line report
    app = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)(_task)
    from analogtrain.engine.trainer import TrainingDiverged
    from analogtrain.tracking.callback import end_open_parents

    if user_full_error:
        os.environ["ANALOGTRAIN_FULL_ERROR"] = "1"
    _RUN_ERROR.clear()
    try:
        app()
        if _RUN_ERROR:
            raise _RUN_ERROR.pop()
    except KeyboardInterrupt:
        end_open_parents("KILLED")
        print("analogtrain: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDiverged as e:
        end_open_parents("FAILED")
        if user_full_error:
            raise
        print(f"analogtrain: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        end_open_parents("FAILED")
        if user_full_error or not _is_config_error(e):
            raise
        print(f"analogtrain: error: {format_error(e)}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        if not user_full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
