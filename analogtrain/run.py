"""``train(cfg)``: one training run, orchestration only.

    validate (ConfigError before any work) -> seeds -> data -> checkpoint/resume check
    -> init.checkpoint resolved (transfer learning) -> tracker -> model (init seed) -> load init.checkpoint
    -> algo.prepare (analog conversion) -> tile kernel built or loaded (before any timed step)
    -> programming noise -> Trainer.fit -> [stage=pretrain: save pretrained/model.pt] -> artifacts -> summary

Importable and usable without the CLI (tests, notebooks): compose a config with Hydra's compose API and
call ``train(cfg, run_dir=...)``. Under ``@hydra.main`` the run directory is Hydra's output dir;
starting the same run directory again resumes from ``<run_dir>/checkpoints/last.pt`` and continues the
same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from analogtrain.config.errors import ConfigError
from analogtrain.config.validate import validate_config
from analogtrain.engine.checkpoint import check_compatible, checkpoint_path, fingerprint, load_checkpoint
from analogtrain.engine.trainer import Trainer, TrainingDiverged
from analogtrain.utils.seeding import derive_seeds, seed_everything

log = logging.getLogger("analogtrain")

MLFLOW_RUN_FILE = "mlflow_run.json"

__all__ = ["train", "TrainingDiverged"]


def hydra_context() -> dict[str, Any]:
    """What this job knows from Hydra (empty outside a Hydra app): output dir, group choices, mode,
    sweep dir, launcher target and the task overrides."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
    except Exception:
        return {}
    ctx = {
        "choices": {k: v for k, v in OmegaConf.to_container(hc.runtime.choices).items() if not k.startswith("hydra/")},
        "mode": str(hc.mode),
        "overrides": list(hc.overrides.task),
        "launcher": str(hc.launcher.get("_target_", "")),
        "job_num": hc.job.get("num"),
    }
    with contextlib.suppress(Exception):
        ctx["output_dir"] = hc.runtime.output_dir
        if hc.output_subdir is not None:  # Hydra's own files of this start (.hydra/)
            ctx["hydra_dir"] = str(Path(hc.runtime.output_dir) / hc.output_subdir)
    if "MULTIRUN" in ctx["mode"]:
        ctx["sweep_dir"] = str(Path(hc.sweep.dir).resolve())
    return ctx


def kept_hydra_dir(run_dir: Path) -> Path:
    """Where a run dir keeps the Hydra files (``.hydra/``) of its last accepted start."""
    return Path(run_dir) / "checkpoints" / "hydra"


def keep_hydra_files(ctx: dict, run_dir: Path) -> None:
    """Copy this start's Hydra files (``ctx["hydra_dir"]``) to ``kept_hydra_dir``: Hydra rewrites
    ``.hydra/`` before a job can check its config, so a start that is then refused (another
    ``trainer.lr`` on resume, a bad value) would leave the run dir describing a config it never ran;
    ``cli`` restores them from here (``restore_hydra_files``)."""
    src = ctx.get("hydra_dir")
    if not src or not Path(src).is_dir():
        return
    import shutil

    dst = kept_hydra_dir(run_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(src).glob("*.yaml"):
        shutil.copy2(f, dst / f.name)


def restore_hydra_files(ctx: dict) -> str:
    """After a refused start: put back the run dir's Hydra files of its last accepted start, or, for a
    run dir that this refused start created (nothing in it but Hydra's files and the job's log), remove
    it, so a mistyped command leaves nothing behind (its error went to stderr). Returns what it did
    ("restored", "removed", "")."""
    import shutil

    out, hydra_dir = ctx.get("output_dir"), ctx.get("hydra_dir")
    if not out or not hydra_dir:
        return ""
    run_dir, hd = Path(out), Path(hydra_dir)
    kept = kept_hydra_dir(run_dir)
    if kept.is_dir():
        for f in kept.glob("*.yaml"):
            shutil.copy2(f, hd / f.name)
        return "restored"
    log_file = run_dir / "analogtrain.log"
    entries = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    if entries <= {hd.name, "analogtrain.log"}:
        shutil.rmtree(hd, ignore_errors=True)
        log_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run_dir.rmdir()
        return "removed"
    return ""


def select_device(accelerator: str) -> torch.device:
    if accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def configure_torch(tc, ctx: dict) -> None:
    """Threads (1 per joblib sweep worker unless set) and deterministic algorithms."""
    n = int(tc.num_threads)
    if n == 0 and "joblib" in ctx.get("launcher", "").lower():
        n = 1  # parallel sweep workers share the cores
    if n > 0:
        torch.set_num_threads(n)
    if tc.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM (scheduler preemption, ``kill``) into KeyboardInterrupt so the run ends KILLED.
    Leaves handlers installed by a launcher (e.g. submitit) alone."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def deferred_signals():
    """SIGINT and SIGTERM during the block are recorded (the yielded list gets their numbers), not
    raised: the end of a run (artifacts, the MLflow status) is written completely even when a second
    Ctrl-C or a scheduler's SIGTERM arrives during it. The previous handlers are restored afterwards.
    Outside the main thread (signals cannot be caught there) it does nothing."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def handler(signum, frame):
        got.append(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except Exception:
        return None


def make_tracker(cfg, run_dir: Path, ctx: dict, resume: bool):
    """No-op tracker for ``logger=none``; else an MLflow run (re-opened when ``resume``: a checkpoint of
    this run dir is being resumed; a child of the sweep's parent run in a multirun)."""
    from analogtrain.tracking import Tracker

    if cfg.logger.name == "none":
        return Tracker()
    from analogtrain.tracking.callback import read_parent
    from analogtrain.tracking.mlflow_tracker import MLflowTracker, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.logger.tracking_uri)
    resume_id = None
    rec_path = run_dir / MLFLOW_RUN_FILE
    if resume and rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        if rec.get("tracking_uri") == uri:
            resume_id = rec.get("run_id")
    parent = read_parent(ctx["sweep_dir"]) if ctx.get("sweep_dir") else None
    tags = {"analogtrain.run_dir": str(run_dir), "analogtrain.data": cfg.data.name,
            "analogtrain.overrides": " ".join(ctx.get("overrides", [])) or "(defaults)",
            **{f"choice.{k}": v for k, v in ctx.get("choices", {}).items() if v is not None},
            **{f"override.{o.split('=', 1)[0].lstrip('+~')}": o.split("=", 1)[1]
               for o in ctx.get("overrides", []) if "=" in o},
            **dict(cfg.logger.get("tags") or {})}
    from analogtrain.report.tags import sweep_tags

    # swept values as tags too (params hold every value; tags mark what the sweep varied)
    tags.update(sweep_tags(ctx.get("overrides", []), sweep_dir=ctx.get("sweep_dir")))
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    tracker = MLflowTracker(uri, cfg.logger.experiment, run_name_of(cfg, ctx), tags=tags,
                            parent_run_id=parent["run_id"] if parent and parent.get("tracking_uri") == uri else None,
                            resume_run_id=resume_id)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    rec_path.write_text(json.dumps({"tracking_uri": uri, "run_id": tracker.run_id,
                                    "experiment_id": tracker.experiment_id}))
    return tracker


def log_artifacts(cfg, tracker, run_dir: Path, algo, model, summary, history) -> None:
    """Write the run's outputs to ``run_dir`` and log them: resolved config, curves PNG, history CSV,
    summary JSON, Hydra's ``.hydra/`` files, the device response plot (analog runs) and whatever the
    algorithm adds through its optional ``artifacts(model, out_dir) -> list[Path]`` hook."""
    from analogtrain.engine.report import plot_curves, write_history, write_summary

    out = run_dir / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    paths: list[tuple[Path, str | None]] = [(run_dir / "config.yaml", None)]
    p = plot_curves(history, out / "curves.png", title=str(summary.get("run_name", "")))
    if p:
        paths.append((p, None))
    if history:
        paths.append((write_history(history, out / "history.csv"), None))
    paths.append((write_summary(summary, out / "summary.json"), None))
    if (run_dir / ".hydra").is_dir():
        paths.append((run_dir / ".hydra", "hydra"))
    if getattr(algo, "is_analog", False):
        try:
            from analogtrain.devices.plot import device_figure
        except ImportError:
            device_figure = None
        if device_figure is not None:
            try:
                paths.append((Path(device_figure(cfg.device, out / "device.png") or out / "device.png"), None))
            except Exception as e:  # a plotting bug must not fail a finished run
                log.warning("device plot failed: %s", e)
    hook = getattr(algo, "artifacts", None)
    if callable(hook):
        try:
            paths += [(Path(q), "algo") for q in (hook(model, out) or [])]
        except Exception as e:
            log.warning("algorithm artifacts failed: %s", e)
    if cfg.logger.get("log_artifacts", True):
        for path, sub in paths:
            if path.exists():
                tracker.log_artifact(path, sub)


def resolve_objective(name: str, data) -> str:
    """The metric ``trainer.objective`` names for a run on ``data`` (a built data set: its ``task`` and
    splits), checked before any work. ``auto``: val/acc (classification) or val/loss (regression), from
    the test split when there is no validation split (from training when there is neither). Raises
    ConfigError naming the metrics this run produces when ``name`` is not one of them."""
    if name == "auto":
        metric = "acc" if data.task == "classification" else "loss"
        split = "val" if len(data.val) > 0 else ("test" if len(data.test) > 0 else None)
        return f"{split}/{metric}" if split else ("train/acc" if metric == "acc" else "train/loss_epoch")
    available = {f"{s}/{m}" for s in ("val", "test") for m in ("loss", "acc")
                 if len(getattr(data, s)) > 0 and (m == "loss" or data.task == "classification")}
    available |= {"train/loss_epoch"} | ({"train/acc"} if data.task == "classification" else set())
    if name not in available:
        raise ConfigError("trainer.objective", f"'{name}' is not produced by this run; choose auto or one of "
                          f"{', '.join(sorted(available))}")
    return name


def train(cfg: DictConfig, run_dir: str | Path | None = None, hydra_ctx: dict | None = None) -> dict[str, Any]:
    """Run one training job described by the composed config ``cfg``; return the summary dict
    (final metrics, ``best/*``, ``status``, ``run_dir``, ``mlflow_run_id``).

    ``hydra_ctx`` is what the job knows from Hydra (``hydra_context()``: group choices for the run name,
    output dir, sweep dir, overrides); the CLI passes it. Library calls leave it ``None`` and get none:
    Hydra's global ``HydraConfig`` outlives its job, so reading it here would mix in another job's choices.

    Raises ``ConfigError`` (bad config or missing data, before any work), ``TrainingDiverged`` (NaN/inf
    loss; the MLflow run ends FAILED) or ``KeyboardInterrupt`` (Ctrl-C/SIGTERM; the run ends KILLED).
    """
    from analogtrain.algorithms.base import build_algorithm
    from analogtrain.data import build_data
    from analogtrain.models import build_model

    t_start = time.perf_counter()
    validate_config(cfg)
    ctx = dict(hydra_ctx or {})
    if run_dir is None:
        if "output_dir" not in ctx:
            raise ConfigError("run_dir", "train(cfg) outside a Hydra app needs run_dir=<directory>")
        run_dir = ctx["output_dir"]
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_torch(cfg.trainer, ctx)
    device = select_device(cfg.trainer.accelerator)
    seeds = derive_seeds(cfg.seed)

    data = build_data(cfg.data, seeds["data"])
    objective = resolve_objective(cfg.trainer.objective, data)

    ckpt_file = checkpoint_path(run_dir)
    fp = fingerprint(cfg)
    ckpt = load_checkpoint(ckpt_file) if cfg.trainer.resume else None
    if ckpt is not None:
        check_compatible(ckpt.get("fingerprint", {}), fp, ckpt_file)
    init_cfg = cfg.get("init")
    init_path = None
    if init_cfg is not None and init_cfg.get("checkpoint") and ckpt is None:  # (a resume restores the model)
        from analogtrain.engine.transfer import resolve_checkpoint

        init_path = resolve_checkpoint(init_cfg.checkpoint, cfg.logger.get("tracking_uri"),
                                       cfg.logger.get("experiment"), download_dir=run_dir / "init")

    # Everything that can reject the input (the model for this data, init.checkpoint's tensors, the
    # algorithm, the pipeline split, the checkpoint's state) is built before the MLflow run exists, so a
    # bad input leaves no run behind; the RNG calls keep their order (init seed, model, load, conversion;
    # pulse seed, trainer).
    torch.manual_seed(seeds["init"])
    model = build_model(cfg.model, data.input_shape, data.num_outputs)
    n_params = sum(p.numel() for p in model.parameters())  # network size (before analog conversion)
    init_report = None
    if init_path is not None:  # transfer learning: weights loaded before the analog conversion
        from analogtrain.engine.transfer import load_pretrained

        init_report = load_pretrained(model, init_path, exclude=list(init_cfg.exclude or []),
                                      strict=bool(init_cfg.strict), source=str(init_cfg.checkpoint))
        log.info("init.checkpoint: %s", init_report.summary())
    algo = build_algorithm(cfg, seeds)
    model = algo.prepare(model).to(device)
    kernel = prepare_kernel(algo, device)
    seed_everything(seeds["pulse"])  # global RNG for anything without its own counter (e.g. dropout)
    trainer = Trainer(cfg, model, algo, data, None, run_dir, device, checkpoint_extra={"fingerprint": fp})
    if ckpt is not None:
        trainer.load_state(ckpt)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    keep_hydra_files(ctx, run_dir)

    name = run_name_of(cfg, ctx)
    status, history, summary, final, tracker = "FAILED", [], {}, {}, None
    with sigterm_as_interrupt():
        # the MLflow run: re-opened only when a checkpoint is resumed (a run dir that never saved one,
        # e.g. a run stopped in its first epoch or refused, starts a new run with the current params)
        tracker = make_tracker(cfg, run_dir, ctx, resume=ckpt is not None)
        trainer.tracker = tracker
        trainer.checkpoint_extra.update(mlflow_run_id=tracker.run_id, tracking_uri=tracker.tracking_uri)
        try:
            if not getattr(tracker, "resumed", False):
                from analogtrain.tracking import flatten

                params = flatten(OmegaConf.to_container(cfg, resolve=True))
                params.update({f"seeds.{k}": v for k, v in seeds.items()})
                tracker.log_params(params)
            else:  # MLflow params cannot change: the length a resume trains to is a tag
                tracker.set_tags({"resume.trainer.epochs": int(cfg.trainer.epochs),
                                  "resume.trainer.max_steps": int(cfg.trainer.max_steps)})
            if init_report is not None:
                _finish_init(cfg, init_report, algo, model, seeds, tracker, run_dir)
            tracker.set_tags({"analogtrain.is_analog": str(bool(getattr(algo, "is_analog", False))).lower(),
                              "analogtrain.kernel": kernel,
                              "analogtrain.n_params": n_params,
                              "analogtrain.torch_threads": torch.get_num_threads(),
                              "analogtrain.accelerator": str(device),
                              "analogtrain.data_source": data.source})
            log.info("run %s: %s on %s (%s), model %s (%d params), %d train / %d val / %d test samples from %s, "
                     "dir %s", name, cfg.algo.name, device, _KERNEL_WORDS[kernel], cfg.model.name, n_params,
                     len(data.train), len(data.val), len(data.test), data.source, run_dir)
            try:
                final = trainer.fit()
            finally:
                history = trainer.state.history
            if cfg.get("stage", "train") == "pretrain":
                _save_pretrained(cfg, model, data, run_dir, tracker, final)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            if ctx.get("sweep_dir"):  # a job's run dir holds another config than a plain start there
                log.warning("interrupted: the MLflow run ends KILLED; launch the same sweep command again "
                            "with hydra.sweep.dir=%s to resume (every job resumes or skips)",
                            ctx["sweep_dir"])
            else:
                log.warning("interrupted: the MLflow run ends KILLED; start the same run directory again to "
                            "resume (hydra.run.dir=%s)", run_dir)
            raise
        except BaseException as e:
            tracker.set_tags({"analogtrain.error": f"{type(e).__name__}: {e}"})
            raise
        finally:
            # the run's records are written whatever comes now: a further Ctrl-C / SIGTERM waits for them
            with deferred_signals() as late:
                summary = dict(final) if status == "FINISHED" else (dict(history[-1]) if history else {})
                summary.update(status=status, run_name=name, run_dir=str(run_dir),
                               mlflow_run_id=tracker.run_id, seed=int(cfg.seed), objective=objective,
                               **{"time/total_s": time.perf_counter() - t_start})
                try:
                    log_artifacts(cfg, tracker, run_dir, algo, model, summary, history)
                except Exception as e:  # artifacts are best-effort; the run status must still be recorded
                    log.warning("could not write/log artifacts: %s", e)
                tracker.finish(status)
            if late:
                log.warning("signal %s while the run's records were written: they are complete (status %s)",
                            late[0], status)
    from analogtrain.engine.report import print_summary

    print_summary(summary, title=name)
    return summary


_KERNEL_WORDS = {"compiled": "compiled tile kernel", "reference": "pure-torch reference ops",
                 "none": "digital"}


def prepare_kernel(algo, device: torch.device) -> str:
    """The tile ops' implementation for this run (the MLflow tag ``analogtrain.kernel``): ``compiled`` or
    ``reference`` for an analog algorithm — the compiled kernel is built or loaded here, before the first
    training step, so a first build is logged and is not counted in the first epoch's steps/s —, ``none``
    for a digital run (no tile ops)."""
    if not getattr(algo, "is_analog", False):
        return "none"
    from analogtrain import ops

    return ops.prepare_kernel(device.type)


def _finish_init(cfg, report, algo, model, seeds, tracker, run_dir: Path) -> None:
    """After the conversion of a model initialised from ``init.checkpoint``: programming noise on the analog
    tiles (``init.programming_noise``), then the init report as tags and ``artifacts/init_report.json``."""
    from analogtrain.engine.transfer import program_tiles

    if getattr(algo, "is_analog", False):
        report.programming = program_tiles(model, cfg.init.get("programming_noise"), seeds["pulse"])
        log.info("programmed the analog tiles: %s", report.programming)
    elif cfg.init.get("programming_noise") is not None:
        log.info("init.programming_noise is ignored: algo=%s is digital", cfg.algo.name)
    tracker.set_tags(report.tags())
    path = report.write(run_dir / "artifacts" / "init_report.json")
    if cfg.logger.get("log_artifacts", True):
        tracker.log_artifact(path, None)


def _save_pretrained(cfg, model, data, run_dir: Path, tracker, final: dict) -> None:
    """``stage=pretrain``: the trained weights as ``pretrained/model.pt`` (+ ``model.json``) in the run dir
    and as the MLflow artifacts ``pretrained/``; ``init.checkpoint=<run dir | run id | latest>`` finds them."""
    from analogtrain.engine.transfer import save_pretrained

    meta = {"model": OmegaConf.to_container(cfg.model, resolve=True), "input_shape": list(data.input_shape),
            "num_outputs": int(data.num_outputs), "class_names": list(data.class_names or []),
            "data": cfg.data.name, "data_classes": OmegaConf.to_container(cfg.data, resolve=True).get("classes"),
            "seed": int(cfg.seed), "mlflow_run_id": tracker.run_id,
            "final": {k: v for k, v in (final or {}).items() if isinstance(v, (int, float, str))}}
    out = save_pretrained(model, run_dir, meta)
    log.info("stage=pretrain: weights saved to %s", out / "model.pt")
    tracker.set_tags({"analogtrain.stage": "pretrain", "analogtrain.pretrained": str(out / "model.pt")})
    if cfg.logger.get("log_artifacts", True):
        tracker.log_artifact(out, "pretrained")


def run_name_of(cfg, ctx: dict) -> str:
    """Run name from the Hydra choices; sweep jobs get their job number appended (``...-s0-j3``) so runs that
    differ only in a swept scalar (e.g. the lr) stay distinguishable in the MLflow UI."""
    from analogtrain.tracking import run_name

    name = run_name(cfg, ctx.get("choices"))
    if ctx.get("sweep_dir") is not None and ctx.get("job_num") is not None and not cfg.logger.get("run_name"):
        name += f"-j{ctx['job_num']}"
    return name
