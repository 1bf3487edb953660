"""``PipelineExecutor``: pipeline-parallel training of one model, simulated on one device.

The trainer replaces ``out = model(x); loss = loss_fn(out, y); loss.backward(); opt.step()`` by
``res = executor.train_step(x, y)`` (``res.loss``, ``res.output``). The executor

1. splits the model into stages (:mod:`analogtrain.pipeline.stages`) and each mini-batch into
   micro-batches (``torch.tensor_split``);
2. runs every stage's op sequence of the chosen schedule (:mod:`analogtrain.pipeline.schedule`) in
   clock order (:mod:`analogtrain.pipeline.clock`), with per-stage queues of activations and gradients;
3. restricts the optimizer to a stage's parameters when that stage updates (so ``AnalogSGD`` applies
   the pulsed update of exactly that stage's tiles, with the trainer's lrs, schedules and momentum);
4. records per stage the weight version every forward and backward saw, and the clock.

Backward with the *current* weights (async). A stage's forward keeps its autograd graph (so the
activations the update uses are those of the forward), but the backward must read the weights the stage
has *at backward time* — analog hardware cannot stash old weights. Analog layers do this by
construction: ``AnalogTile``'s backward calls ``rule.effective_weight()`` when it runs. Digital
parameters are saved by autograd as (views of) the live parameter tensors; the forward runs under
``torch.autograd.graph.saved_tensors_hooks`` that keep saved tensors by reference, which also switches
off autograd's "modified by an inplace operation" check, so a digital backward after its stage's update
reads the updated values. The same hooks give the executor every saved tensor of an in-flight
micro-batch, which is what makes a checkpoint of a running async pipeline possible: activations are
stored, parameter aliases are not, and ``load_state_dict`` rebuilds each graph by replaying the stage
forward (buffers and RNG restored afterwards) with the stored activations substituted.

Loss scaling: every micro-batch's loss is weighted by its share of the mini-batch (``n_t / B``), so
each sample's gradient has the same weight 1/B in all three modes; the schedules then differ only in
which weight version each sample sees and when updates land. ``loss_fn(out, y)`` must return the mean
over its batch (the trainer's ``F.mse_loss`` / ``F.cross_entropy``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from analogtrain.config.errors import ConfigError
from analogtrain.pipeline.clock import Clock, StageCosts, count_vectors, derive_costs
from analogtrain.pipeline.config import PipelineConfig, pipeline_from_config
from analogtrain.pipeline.schedule import AsyncSchedule, SyncSchedule
from analogtrain.pipeline.stages import Stage, split_stages

__all__ = ["PipelineExecutor", "StepOutput", "Event"]

log = logging.getLogger(__name__)

STATE_FORMAT = 1


@dataclass
class StepOutput:
    """Result of one ``train_step``.

    ``loss``: scalar (detached), mean loss of the mini-batch's samples, each computed with the weights
    its forward saw; ``output``: (B, ...) detached model outputs in sample order; ``cycles``: the
    pipeline clock after the step; ``samples``: samples trained on so far (cumulative)."""

    loss: torch.Tensor
    output: torch.Tensor
    cycles: float
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Event:
    """One executed op: ``kind`` F/B/U at ``stage`` for micro-batch ``t``; ``version``: the stage's
    weight version the op read (U: the version it produced); ``fwd_version``: for B, the version its
    forward read; ``start``/``end``: clock cycles; ``n``: samples."""

    kind: str
    stage: int
    t: int
    version: int
    start: float
    end: float
    n: int
    fwd_version: int | None = None


class _Record:
    """One in-flight (stage, micro-batch): the stage input leaf, the output (graph root), the saved
    tensors of the stage's autograd graph, and the weight version the forward read."""

    __slots__ = ("leaf", "out", "saved", "fwd_version")

    def __init__(self, fwd_version: int):
        self.leaf = self.out = None
        self.saved: list[torch.Tensor] = []
        self.fwd_version = int(fwd_version)

    def pack(self, t: torch.Tensor) -> int:
        self.saved.append(t)
        return len(self.saved) - 1

    def unpack(self, i: int) -> torch.Tensor:
        return self.saved[i]


@contextmanager
def restricted_optimizer(optimizer: torch.optim.Optimizer, param_ids: set[int]):
    """Within the block, ``optimizer.param_groups`` hold only the parameters whose id is in
    ``param_ids`` (groups left empty are dropped); restored afterwards. Per-parameter optimizer state is
    keyed by the tensor, so momentum etc. carry over; ``AnalogSGD`` steps only the tiles whose group
    survives."""
    groups = optimizer.param_groups
    lists = [g["params"] for g in groups]
    kept = []
    for g in groups:
        sub = [p for p in g["params"] if id(p) in param_ids]
        if sub:
            g["params"] = sub
            kept.append(g)
    optimizer.param_groups = kept
    try:
        yield
    finally:
        for g, lst in zip(groups, lists):
            g["params"] = lst
        optimizer.param_groups = groups


class PipelineExecutor:
    """Pipelined training of ``model`` with ``optimizer`` and ``loss_fn`` per ``cfg`` (``trainer.pipeline``).

    Args:
        model: the prepared (e.g. analog-converted) model; split per ``cfg.stages``.
        optimizer: the trainer's optimizer (``algo.build_optimizer``); ``step()`` is called once per
            stage update with the param groups restricted to that stage.
        loss_fn: ``loss_fn(output, target) -> mean loss`` (scalar).
        cfg: ``PipelineConfig`` / DictConfig / dict; validated (``ConfigError`` naming
            ``trainer.pipeline.<key>``).

    ``mode=none`` runs the schedule with one micro-batch per mini-batch (ordinary training, plus the
    cycle accounting). State (queues, counters, clock, in-flight activations) is in ``state_dict``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], cfg: PipelineConfig | dict | None):
        self.cfg = pipeline_from_config(cfg)
        self.mode = self.cfg.mode
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.stages: list[Stage] = split_stages(model, self.cfg.stages)
        self.S = len(self.stages)
        self._layers = [st.weight_layers() for st in self.stages]
        self._partial: dict[int, list[float | None]] = {}  # per-stage overrides when some are derived
        self.costs: list[StageCosts | None] = [self._override_costs(s) for s in range(self.S)]
        self.n_vec: list[dict[str, float]] = [{} for _ in range(self.S)]
        self.clock = Clock(self.S)
        self.version = [0] * self.S  # updates applied per stage
        self.fed = 0  # micro-batches fed so far (global index t)
        self.base = 0  # first t of the current async stream segment (after the last drain)
        self.pos = [0] * self.S  # position of each stage in its current op sequence
        self.samples = 0  # samples trained on
        self.pending = [0] * self.S  # samples cached by a stage's backwards since its last update
        self.stale_sum, self.stale_max, self.stale_n = [0] * self.S, [0] * self.S, [0] * self.S
        self.inflight: dict[tuple[int, int], _Record] = {}
        self.acts: dict[tuple[int, int], torch.Tensor] = {}  # stage output waiting for the next stage
        self.grads: dict[tuple[int, int], torch.Tensor] = {}  # dL/d(stage output) waiting for B
        self.inputs: dict[int, torch.Tensor] = {}  # micro-batch inputs waiting for F_0
        self.targets: dict[int, tuple[torch.Tensor, float]] = {}  # (y_t, n_t / B) waiting for the loss
        self.outs: dict[int, torch.Tensor] = {}  # last-stage outputs (detached) of the current step
        self.losses: dict[int, torch.Tensor] = {}  # weighted loss of each loss group (key: its last t)
        self.events: list[Event] | None = [] if self.cfg.record_events else None
        self._flush: list[int] = []  # sync/none: micro-batches of the current flush

    # ------------------------------------------------------------------ costs
    def _override_costs(self, s: int) -> StageCosts | None:
        vals = []
        for key in ("forward_cycles", "backward_cycles", "update_cycles"):
            v = getattr(self.cfg, key)
            if isinstance(v, (list, tuple)):
                if len(v) != self.S:
                    raise ConfigError(f"trainer.pipeline.{key}", f"has {len(v)} values but the model was split "
                                      f"into {self.S} stages")
                v = v[s]
            vals.append(None if v is None else float(v))
        if all(v is not None for v in vals):
            return StageCosts(*vals)
        self._partial[s] = vals
        return None

    def _finish_costs(self, s: int) -> None:
        d = derive_costs(self._layers[s], self.n_vec[s], float(self.cfg.mvm_cycles), float(self.cfg.pulse_cycles),
                         int(self.cfg.digital_bl))
        f, b, u = self._partial.get(s, [None] * 3)
        self.costs[s] = StageCosts(d.f if f is None else f, d.b if b is None else b, d.u if u is None else u)

    # ------------------------------------------------------------------ public API
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        """Train on one mini-batch x (B, ...), y (B, ...) under the configured schedule.

        none/sync: the mini-batch is complete when this returns (flush). async: its micro-batches have
        all gone forward (their losses are known) and every stage has updated as far as the 1F1B order
        allows; the backwards still owed to earlier stages run during the next calls (or ``drain``)."""
        B = int(x.shape[0])
        if B < 1:
            raise ValueError("train_step needs a non-empty batch")
        M = 1 if self.mode == "none" else min(int(self.cfg.micro_batches), B)
        ts = list(range(self.fed, self.fed + M))
        for t, xt, yt in zip(ts, torch.tensor_split(x, M), torch.tensor_split(y, M)):
            self.inputs[t] = xt
            self.targets[t] = (yt, xt.shape[0] / B)
        self.fed += M
        if self.mode == "async":
            self._run(AsyncSchedule(self.S, self.base))
            loss = torch.stack([self.losses.pop(t) for t in ts]).sum()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._flush = ts
            self.pos = [0] * self.S
            self._run(SyncSchedule(self.S, ts))
            self.pos = [0] * self.S
            loss = self.losses.pop(ts[-1])
        out = torch.cat([self.outs.pop(t) for t in ts]) if M > 1 else self.outs.pop(ts[0])
        self.samples += B
        return StepOutput(loss=loss, output=out, cycles=self.clock.now, samples=self.samples, metrics=self.metrics())

    def drain(self) -> None:
        """Async: end the micro-batch stream — run every owed backward and update (no new forwards).
        The next ``train_step`` starts a fresh fill of the pipeline. No-op for none/sync."""
        if self.mode != "async":
            return
        self._run(AsyncSchedule(self.S, self.base, end=self.fed))
        if self.inflight or self.grads or self.acts:
            raise RuntimeError("pipeline drain left work behind (a bug)")
        self.base, self.pos = self.fed, [0] * self.S

    def metrics(self) -> dict[str, float]:
        """``pipeline/cycles``, ``pipeline/bubble_fraction``, ``pipeline/samples``,
        ``pipeline/cycles_per_sample`` and per stage ``pipeline/stage<s>/{staleness_mean,staleness_max,
        version}`` (staleness = versions between a micro-batch's forward and backward)."""
        m = {"pipeline/cycles": float(self.clock.now), "pipeline/bubble_fraction": self.clock.bubble_fraction(),
             "pipeline/samples": float(self.samples),
             "pipeline/cycles_per_sample": self.clock.now / self.samples if self.samples else 0.0}
        for s in range(self.S):
            n = self.stale_n[s]
            m[f"pipeline/stage{s}/staleness_mean"] = self.stale_sum[s] / n if n else 0.0
            m[f"pipeline/stage{s}/staleness_max"] = float(self.stale_max[s])
            m[f"pipeline/stage{s}/version"] = float(self.version[s])
        return m

    def staleness(self) -> dict[tuple[int, int], tuple[int, int]]:
        """From the event log (``record_events``): ``{(stage, t): (forward version, backward version)}``."""
        if self.events is None:
            raise RuntimeError("set trainer.pipeline.record_events=true to keep the event log")
        return {(e.stage, e.t): (e.fwd_version, e.version) for e in self.events if e.kind == "B"}

    # ------------------------------------------------------------------ the event loop
    def _runnable(self, s: int, op) -> bool:
        kind, t = op
        if kind == "F":
            return t in self.inputs if s == 0 else (s - 1, t) in self.acts
        if kind == "B":
            return (s, t) in self.grads
        return True  # U: its backwards precede it in the stage's own sequence

    def _ready(self, s: int, op) -> float:
        kind, t = op
        if kind == "F" and s > 0:
            return self.clock.ends[("F", s - 1, t)]
        if kind == "B" and s < self.S - 1:
            return self.clock.ends[("B", s + 1, t)]
        return 0.0

    def _run(self, sched) -> None:
        """Execute runnable ops, earliest clock start first (ties: lower stage), until none is left."""
        while True:
            best = None
            for s in range(self.S):
                op = sched.op(s, self.pos[s])
                while op is not None and op[0] == "skip":
                    self.pos[s] += 1
                    op = sched.op(s, self.pos[s])
                if op is None or not self._runnable(s, op):
                    continue
                start = self.clock.start(s, self._ready(s, op))
                if best is None or start < best[0]:
                    best = (start, s, op)
            if best is None:
                return
            start, s, (kind, t) = best
            if kind == "F":
                self._forward(s, t, start)
            elif kind == "B":
                self._backward(s, t, start)
            else:
                self._update(s, t, start)
            self.pos[s] += 1

    # ------------------------------------------------------------------ ops
    def _forward(self, s: int, t: int, start: float) -> None:
        stage = self.stages[s]
        x_in = self.inputs.pop(t) if s == 0 else self.acts.pop((s - 1, t))
        if s > 0:
            self.clock.ends.pop(("F", s - 1, t))
        leaf = x_in.detach()
        if s > 0 and leaf.is_floating_point():
            leaf.requires_grad_(True)
        n = int(leaf.shape[0])
        rec = _Record(self.version[s])
        measure = self.costs[s] is None
        counter = count_vectors(self._layers[s], n, self.n_vec[s]) if measure else nullcontext()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(rec.pack, rec.unpack), counter:
            out = stage.forward(leaf)
        if measure:
            self._finish_costs(s)
        rec.leaf, rec.out = leaf, out
        self.inflight[(s, t)] = rec
        end = self.clock.run(s, start, n * self.costs[s].f)
        self._log("F", s, t, rec.fwd_version, start, end, n)
        if s < self.S - 1:
            self.acts[(s, t)] = out.detach()
            self.clock.ends[("F", s, t)] = end
            return
        self.outs[t] = out.detach()
        self._loss(t)

    def _loss(self, t: int) -> None:
        """Last stage: the loss of t's group (sync/none: the whole flush, once its last micro-batch
        arrived; async: t alone, weighted by n_t / B) and dL/d(output) for each member."""
        S1 = self.S - 1
        if self.mode == "async":
            group = [t]
        else:
            if t != self._flush[-1]:
                return
            group = self._flush
        outs = [self.inflight[(S1, u)].out for u in group]
        ys = [self.targets.pop(u) for u in group]
        with torch.enable_grad():
            if len(group) == 1:
                loss = self.loss_fn(outs[0], ys[0][0])
                if self.mode == "async" and ys[0][1] != 1.0:
                    loss = loss * ys[0][1]
            else:
                loss = self.loss_fn(torch.cat(outs), torch.cat([y for y, _ in ys]))
            needs = [o.requires_grad for o in outs]
            if any(needs):
                gs = torch.autograd.grad(loss, [o for o in outs if o.requires_grad], allow_unused=True)
                it = iter(gs)
                gs = [next(it) if r else None for r in needs]
            else:
                gs = [None] * len(outs)
        for u, o, g in zip(group, outs, gs):
            self.grads[(S1, u)] = torch.zeros_like(o) if g is None else g
        self.losses[group[-1]] = loss.detach()

    def _backward(self, s: int, t: int, start: float) -> None:
        rec = self.inflight.pop((s, t))
        d = self.grads.pop((s, t))
        if s < self.S - 1:
            self.clock.ends.pop(("B", s + 1, t))
        if rec.out.requires_grad:
            torch.autograd.backward(rec.out, d)
        n = int(rec.leaf.shape[0])
        self.pending[s] += n
        end = self.clock.run(s, start, n * self.costs[s].b)
        if s > 0:
            g = rec.leaf.grad
            self.grads[(s - 1, t)] = torch.zeros_like(rec.leaf) if g is None else g
            self.clock.ends[("B", s, t)] = end
        stale = self.version[s] - rec.fwd_version
        self.stale_sum[s] += stale
        self.stale_max[s] = max(self.stale_max[s], stale)
        self.stale_n[s] += 1
        self._log("B", s, t, self.version[s], start, end, n, rec.fwd_version)

    def _update(self, s: int, t: int, start: float) -> None:
        stage = self.stages[s]
        with restricted_optimizer(self.optimizer, stage.param_ids):
            self.optimizer.step()
        for p in stage.params:
            p.grad = None
        self.version[s] += 1
        n, self.pending[s] = self.pending[s], 0
        end = self.clock.run(s, start, n * self.costs[s].u)
        self._log("U", s, t, self.version[s], start, end, n)

    def _log(self, kind, s, t, version, start, end, n, fwd_version=None) -> None:
        if self.events is not None:
            self.events.append(Event(kind, s, t, int(version), float(start), float(end), int(n), fwd_version))

    # ------------------------------------------------------------------ checkpoint
    def _alias_ptrs(self) -> set[int]:
        ptrs = set()
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            p = t.untyped_storage().data_ptr()
            if p:
                ptrs.add(p)
        return ptrs

    def state_dict(self) -> dict:
        """Counters, clock, queues and the in-flight micro-batches (stage input + the saved activations
        of its graph; tensors that alias model parameters/buffers are stored as None)."""
        alias = self._alias_ptrs()

        def saved_entry(x: torch.Tensor):
            p = x.untyped_storage().data_ptr()
            return None if (p and p in alias) else x.detach().clone()

        return {
            "format": STATE_FORMAT, "mode": self.mode, "stages": [st.names for st in self.stages],
            "version": list(self.version), "fed": self.fed, "base": self.base, "pos": list(self.pos),
            "samples": self.samples, "pending": list(self.pending),
            "stale": [list(self.stale_sum), list(self.stale_max), list(self.stale_n)],
            "clock": self.clock.state_dict(),
            "costs": [None if c is None else [c.f, c.b, c.u] for c in self.costs],
            "n_vec": [dict(d) for d in self.n_vec],
            "inflight": [{"s": s, "t": t, "input": r.leaf.detach().clone(), "fwd_version": r.fwd_version,
                          "saved": [saved_entry(x) for x in r.saved]} for (s, t), r in sorted(self.inflight.items())],
            "acts": [[s, t, v.clone()] for (s, t), v in self.acts.items()],
            "grads": [[s, t, v.clone()] for (s, t), v in self.grads.items()],
            "inputs": [[t, v.clone()] for t, v in self.inputs.items()],
            "targets": [[t, v.clone(), w] for t, (v, w) in self.targets.items()],
            "events": None if self.events is None else [vars(e).copy() for e in self.events],
        }

    def load_state_dict(self, st: dict) -> None:
        """Restore ``state_dict`` into an executor built on the same model/config. Load the model and
        optimizer state first: in-flight graphs are rebuilt by replaying each stage forward on the
        current module (its buffers and the global RNG are restored after the replay, and the stored
        activations replace the replay's), so the pending backwards continue exactly."""
        if st.get("format") != STATE_FORMAT:
            raise ValueError(f"pipeline state format {st.get('format')} is not {STATE_FORMAT}")
        if st["mode"] != self.mode or st["stages"] != [s.names for s in self.stages]:
            raise ConfigError("trainer.pipeline", f"the checkpoint was written with mode={st['mode']} and stages "
                              f"{st['stages']}; this run has mode={self.mode} and {[s.names for s in self.stages]}")
        self.version, self.fed, self.base = list(st["version"]), int(st["fed"]), int(st["base"])
        self.pos, self.samples, self.pending = list(st["pos"]), int(st["samples"]), list(st["pending"])
        self.stale_sum, self.stale_max, self.stale_n = (list(v) for v in st["stale"])
        self.clock.load_state_dict(st["clock"])
        self.costs = [None if c is None else StageCosts(*c) for c in st["costs"]]
        self.n_vec = [dict(d) for d in st["n_vec"]]
        dev = next(iter(self.model.parameters())).device
        self.acts = {(int(s), int(t)): v.to(dev) for s, t, v in st["acts"]}
        self.grads = {(int(s), int(t)): v.to(dev) for s, t, v in st["grads"]}
        self.inputs = {int(t): v.to(dev) for t, v in st["inputs"]}
        self.targets = {int(t): (v.to(dev), float(w)) for t, v, w in st["targets"]}
        self.outs, self.losses = {}, {}
        if st.get("events") is not None and self.events is not None:
            self.events = [Event(**e) for e in st["events"]]
        self.inflight = {}
        for r in st["inflight"]:
            self.inflight[(int(r["s"]), int(r["t"]))] = self._replay(int(r["s"]), r, dev)

    def _replay(self, s: int, r: dict, dev) -> _Record:
        stage = self.stages[s]
        leaf = r["input"].to(dev).detach().clone()
        if s > 0 and leaf.is_floating_point():
            leaf.requires_grad_(True)
        rec = _Record(int(r["fwd_version"]))
        bufs = stage.buffers()
        snap = [b.detach().clone() for b in bufs]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(rec.pack, rec.unpack):
                out = stage.forward(leaf)
        finally:
            with torch.no_grad():
                for b, v in zip(bufs, snap):
                    b.copy_(v)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        saved = r["saved"]
        if len(saved) != len(rec.saved):
            raise RuntimeError(f"pipeline resume: stage {s} saved {len(rec.saved)} tensors on replay but the "
                               f"checkpoint holds {len(saved)}; the stage's forward is not structurally deterministic")
        for i, v in enumerate(saved):
            if v is not None:
                if tuple(v.shape) != tuple(rec.saved[i].shape):
                    raise RuntimeError(f"pipeline resume: saved tensor {i} of stage {s} has shape {tuple(v.shape)}, "
                                       f"the replay {tuple(rec.saved[i].shape)}")
                rec.saved[i] = v.to(dev)
        rec.leaf, rec.out = leaf, out
        return rec
