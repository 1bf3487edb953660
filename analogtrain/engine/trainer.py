"""The training loop: epochs of SGD steps through the algorithm contract, evaluation, checkpoints.

The loop knows nothing about analog hardware; it only uses the contract of
:mod:`analogtrain.algorithms.base` (``build_optimizer`` returns a ``torch.optim.Optimizer`` whose
``step()`` also runs the analog tile updates; ``metrics(model)`` returns ``tile/<layer>/<stat>``).

Per step:   x (B, *input_shape), y (B,) | (B, n_out)  ->  loss  ->  backward  ->  opt.step()
Per epoch:  lr schedule -> train -> eval val (+ test) -> metrics -> checkpoint (resume point)

Determinism: batches of epoch e come from a generator seeded by (data seed, e); all other randomness
uses either tile-owned counters (checkpointed in module buffers) or the global RNGs (checkpointed), so
a run resumed from the checkpoint of epoch e continues bit-identically on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from analogtrain.config.errors import ConfigError
from analogtrain.engine.checkpoint import checkpoint_path, save_checkpoint
from analogtrain.utils.logging import console, is_interactive
from analogtrain.utils.seeding import rng_state, set_rng_state

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the run stops and is marked FAILED."""


def lr_factor(schedule: str, epoch: int, epochs: int, step_size: int, gamma: float, lr: float,
              lr_min: float) -> float:
    """Multiplier of the base lr at (0-based) ``epoch``: none 1; step ``gamma**(epoch // step_size)``;
    cosine from 1 to ``lr_min/lr`` over ``epochs`` (``lr_min + (lr - lr_min)(1 + cos(pi e/E))/2``)."""
    if schedule == "step":
        return gamma ** (epoch // step_size)
    if schedule == "cosine":
        floor = lr_min / lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    return 1.0


@dataclass
class TrainState:
    """Counters that, with the model/optimizer state and RNGs, define where training stands."""

    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer steps done
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics dict per epoch
    finished: bool = False
    # the last epoch was cut short by trainer.max_steps (its remaining batches never ran): counted as
    # completed, so such a checkpoint cannot continue exactly (load_state refuses to train on from it)
    partial_epoch: bool = False


class Trainer:
    """Runs ``cfg.trainer`` on a prepared model.

    Args:
        cfg: the composed run config (reads ``cfg.trainer``).
        model: already ``algo.prepare``d and moved to ``device``.
        algo: the :class:`~analogtrain.algorithms.base.Algorithm`.
        data: :class:`~analogtrain.data.DataBundle`.
        tracker: :class:`~analogtrain.tracking.Tracker` (no-op or MLflow).
        run_dir: where ``checkpoints/last.pt`` lives.
        checkpoint_extra: merged into every checkpoint (run.train adds the MLflow run id, fingerprint).
        callbacks: ``fn(trainer, metrics)`` called after each epoch's metrics (e.g. extra plots/metrics).
    """

    def __init__(self, cfg, model: torch.nn.Module, algo, data, tracker, run_dir: str | Path,
                 device: torch.device, checkpoint_extra: dict | None = None,
                 callbacks: list[Callable[["Trainer", dict], None]] | None = None):
        self.cfg, self.tc = cfg, cfg.trainer
        self.model, self.algo, self.data, self.tracker = model, algo, data, tracker
        self.run_dir, self.device = Path(run_dir), device
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.callbacks = list(callbacks or [])
        loss = self.tc.loss if self.tc.loss != "auto" else (
            "cross_entropy" if data.task == "classification" else "mse")
        self.loss_name = loss
        self.loss_fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
        self.optimizer = algo.build_optimizer(model, lr=float(self.tc.lr))
        for g in self.optimizer.param_groups:  # the schedule scales each group's own base lr
            g.setdefault("initial_lr", g["lr"])
        self.state = TrainState()
        # trainer.pipeline.mode sync|async: PipelineExecutor.train_step replaces forward/backward/step
        self.pipeline = None
        pcfg = self.tc.get("pipeline")
        if pcfg is not None and pcfg.mode != "none":
            from analogtrain.pipeline import PipelineExecutor

            self.pipeline = PipelineExecutor(model, self.optimizer, self.loss_fn, pcfg)

    # ------------------------------------------------------------------ checkpoint
    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Restore model, optimizer, counters and RNGs from a checkpoint dict."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        epoch, step = int(ckpt["epoch"]), int(ckpt["global_step"])
        # "finished" is recomputed: a finished run started again with more epochs/steps continues
        done = epoch >= self.tc.epochs or bool(self.tc.max_steps and step >= self.tc.max_steps)
        partial = bool(ckpt.get("partial_epoch", False))
        if partial and not done:
            raise ConfigError(
                "trainer.max_steps",
                f"the checkpoint stopped inside epoch {epoch} at step {step} (trainer.max_steps); training on "
                f"from it would skip the rest of that epoch, so it cannot match an uninterrupted run: keep "
                f"trainer.max_steps={step} (and trainer.epochs) to report it, or start over with "
                f"trainer.resume=false")
        self.state = TrainState(epoch, step, list(ckpt["history"]), done, partial)
        if self.pipeline is not None and ckpt.get("pipeline") is not None:
            self.pipeline.load_state_dict(ckpt["pipeline"])
        set_rng_state(ckpt["rng"])

    def save_state(self) -> None:
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.state.epoch, "global_step": self.state.global_step, "history": self.state.history,
            "finished": self.state.finished, "partial_epoch": self.state.partial_epoch, "rng": rng_state(),
            **self.checkpoint_extra,
        }
        if self.pipeline is not None:
            state["pipeline"] = self.pipeline.state_dict()
        save_checkpoint(checkpoint_path(self.run_dir), state)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Mean loss (and accuracy for classification) over a whole split: ``{split}/loss``, ``{split}/acc``."""
        s = getattr(self.data, split)
        if len(s) == 0:
            return {}
        self.model.eval()
        total, correct, n = 0.0, 0, 0
        for x, y in self.data.eval_batches(split, self.device):
            out = self.model(x)
            total += float(self.loss_fn(out, y, reduction="sum")) / (1 if self.loss_name == "cross_entropy"
                                                                    else out[0].numel())
            if self.data.task == "classification":
                correct += int((out.argmax(1) == y).sum())
            n += len(y)
        self.model.train()
        res = {f"{split}/loss": total / n}
        if self.data.task == "classification":
            res[f"{split}/acc"] = correct / n
        return res

    # ------------------------------------------------------------------ loop
    def _set_lr(self, epoch: int) -> float:
        f = lr_factor(self.tc.lr_schedule, epoch, self.tc.epochs, self.tc.lr_step_size, self.tc.lr_gamma,
                      self.tc.lr, self.tc.lr_min)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
        return self.optimizer.param_groups[0]["lr"]

    def _progress(self):
        mode = self.tc.progress
        enabled = mode == "on" or (mode == "auto" and is_interactive())
        if not enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[info]}"), console=console(), transient=False)

    def fit(self) -> dict[str, Any]:
        """Train from ``self.state`` to ``trainer.epochs`` (or ``max_steps``); returns the final metrics."""
        tc, st = self.tc, self.state
        max_steps = int(tc.max_steps) or None
        spe = self.data.steps_per_epoch()
        total = min(tc.epochs * spe, max_steps) if max_steps else tc.epochs * spe
        if st.finished:
            log.info("nothing to train: the checkpoint %s already holds the finished run (epoch %d, step %d)",
                     checkpoint_path(self.run_dir), st.epoch, st.global_step)
        elif st.epoch > 0:
            log.info("resuming at epoch %d/%d (step %d) from %s", st.epoch + 1, tc.epochs, st.global_step,
                     checkpoint_path(self.run_dir))
        progress = self._progress()
        task = None
        if progress is not None:
            progress.start()
            task = progress.add_task("train", total=total, completed=st.global_step, info="")
        self.model.train()
        try:
            while st.epoch < tc.epochs and not st.finished:
                if max_steps and st.global_step >= max_steps:
                    break
                self._run_epoch(st.epoch, max_steps, progress, task)
        finally:
            if progress is not None:
                progress.stop()
        st.finished = True
        if tc.checkpoint:
            self.save_state()
        return self.final_metrics()

    def _run_epoch(self, epoch: int, max_steps: int | None, progress, task) -> None:
        tc, st = self.tc, self.state
        lr = self._set_lr(epoch)
        t0 = time.perf_counter()
        ep_loss, ep_correct, ep_n, steps = 0.0, 0, 0, 0
        win_loss, win_n = 0.0, 0
        classification = self.data.task == "classification"
        for x, y in self.data.train_batches(epoch, self.device):
            if self.pipeline is not None:
                so = self.pipeline.train_step(x, y)  # forward/backward/updates per the pipeline schedule
                out, lv = so.output, float(so.loss)
            else:
                out = self.model(x)
                loss = self.loss_fn(out, y)
                lv = float(loss.detach())
            if not math.isfinite(lv):
                raise TrainingDiverged(
                    f"train/loss became {lv} at epoch {epoch + 1}, step {st.global_step + 1} (lr={lr:g}); "
                    f"lower trainer.lr or check the data/device settings")
            if self.pipeline is None:
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
            st.global_step += 1
            steps += 1
            ep_loss += lv * len(y)
            ep_n += len(y)
            if classification:
                ep_correct += int((out.detach().argmax(1) == y).sum())
            win_loss += lv
            win_n += 1
            if st.global_step % tc.log_every_n_steps == 0:
                step_metrics = {"train/loss": win_loss / win_n}
                if self.pipeline is not None:  # clock cycles / samples axes of the pipeline study
                    pm = self.pipeline.metrics()
                    step_metrics.update(pm)
                    # the same loss on the two axes the pipeline study compares: samples seen and cycles
                    self.tracker.log_metrics({"train/loss_vs_samples": win_loss / win_n},
                                             step=int(pm["pipeline/samples"]))
                    self.tracker.log_metrics({"train/loss_vs_cycles": win_loss / win_n},
                                             step=int(pm["pipeline/cycles"]))
                self.tracker.log_metrics(step_metrics, step=st.global_step)
                win_loss, win_n = 0.0, 0
            if progress is not None:
                progress.update(task, advance=1, description=f"epoch {epoch + 1}/{tc.epochs}",
                                info=f"loss {lv:.4f}")
            if max_steps and st.global_step >= max_steps:
                break
        if self.pipeline is not None:
            self.pipeline.drain()  # end of the epoch's sample stream: run the owed backwards/updates
        train_s = time.perf_counter() - t0

        # per-step "train/loss" (logged at the global step) and its epoch mean "train/loss_epoch" (logged at
        # the epoch number) are different metrics: one MLflow key never mixes two step axes
        metrics: dict[str, float] = {"epoch": epoch + 1, "lr": lr, "train/loss_epoch": ep_loss / max(ep_n, 1)}
        if classification:
            metrics["train/acc"] = ep_correct / max(ep_n, 1)
        metrics.update(self.evaluate("val"))
        last = (epoch + 1 >= tc.epochs) or bool(max_steps and st.global_step >= max_steps)
        if tc.eval_test or last:
            metrics.update(self.evaluate("test"))
        metrics.update({f"{k}": float(v) for k, v in self.algo.metrics(self.model).items()})
        if self.pipeline is not None:
            metrics.update(self.pipeline.metrics())
        metrics.update({
            "perf/steps_per_s": steps / max(train_s, 1e-9), "perf/samples_per_s": ep_n / max(train_s, 1e-9),
            "perf/epoch_s": time.perf_counter() - t0, "progress/global_step": st.global_step,
            "progress/samples": (st.history[-1]["progress/samples"] if st.history else 0) + ep_n,
        })
        for cb in self.callbacks:
            cb(self, metrics)
        st.history.append(metrics)
        st.epoch = epoch + 1
        st.finished = last
        st.partial_epoch = steps < self.data.steps_per_epoch()  # (max_steps broke the loop early)
        # the pipeline counters are on the global-step axis (logged there every log_every_n_steps): their
        # end-of-epoch values (after the drain) go there too, the rest at the epoch number
        on_steps = {k: v for k, v in metrics.items() if k.startswith("pipeline/")}
        self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch" and k not in on_steps},
                                 step=epoch + 1)
        if on_steps:
            self.tracker.log_metrics(on_steps, step=st.global_step)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if k.split("/")[0] in ("train", "val", "test") and isinstance(v, float))
        log.info("epoch %d/%d  %s  (%.1f steps/s)", epoch + 1, tc.epochs, shown, metrics["perf/steps_per_s"])
        if tc.checkpoint:
            self.save_state()

    def final_metrics(self) -> dict[str, Any]:
        """Last epoch's metrics plus the best validation epoch."""
        h = self.state.history
        out: dict[str, Any] = dict(h[-1]) if h else {}
        out["global_step"] = self.state.global_step
        key = "val/acc" if any("val/acc" in m for m in h) else ("val/loss" if any("val/loss" in m for m in h) else None)
        if key:
            vals = [(m[key], m["epoch"]) for m in h if key in m]
            best = max(vals) if key.endswith("acc") else min(vals)
            out[f"best/{key.replace('/', '_')}"] = best[0]
            out["best/epoch"] = best[1]
        return out
