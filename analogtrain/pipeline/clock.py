"""Clock-cycle model of pipelined analog training: what each stage operation costs and when it runs.

Costs per sample of stage s (``StageCosts``; overridable per stage in ``trainer.pipeline``):

* forward ``f_s = Σ_layers n_vec · mvm_cycles`` — the layers of a stage run one after the other; all
  tiles of one layer read in parallel (one read of one vector = ``mvm_cycles``; input blocks are summed
  in digital at no cost);
* backward ``b_s = f_s`` — the transposed read has the same cost;
* update ``u_s = max_layers n_vec · BL · pulse_cycles`` — every tile of the stage applies its pulse
  trains at the same time (a pulse slot reaches all elements of a tile at once); each update vector is
  one train of BL slots. (TT-family transfers, one column every few samples, are not charged.)

``n_vec`` is the number of vectors a sample sends through the layer (1 for a Linear on (B, in),
H_out·W_out for a Conv2d, the token count for a transformer Linear); it is measured with forward hooks
on the first forward of each stage. Digital layers are charged as if they were mapped to tiles, with
``BL = trainer.pipeline.digital_bl``.

An op on n samples lasts ``n·f_s`` (F), ``n·b_s`` (B) or ``n·u_s`` (U). Each stage executes its op
sequence (:mod:`analogtrain.pipeline.schedule`) in order; an op starts when the stage is free and its
data dependency has ended (transfers between stages are free): start = max(stage free, dependency end).
Closed forms for equal stages (per-micro-batch F, B; update of the mini-batch U; M micro-batches):

* none:  Σ_s (F_s + B_s) + U_0 per mini-batch (only the input stage's update is not hidden behind
  earlier stages' backwards);
* sync:  (M + S - 1)(F + B) + U per mini-batch; bubble fraction (S - 1)(F + B) / that;
* async: one micro-batch per max_s (F_s + B_s + U_s) in steady state (1F1B keeps every stage busy).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

__all__ = ["StageCosts", "Clock", "count_vectors", "derive_costs", "sync_minibatch_cycles",
           "sync_bubble_fraction", "async_period"]


@dataclass
class StageCosts:
    """Per-sample cycles of one stage: forward ``f``, backward ``b``, update ``u``."""

    f: float
    b: float
    u: float


@contextmanager
def count_vectors(layers: list[tuple[str, nn.Module]], batch: int, out: dict[str, float]):
    """While active, record in ``out[name]`` the vectors per sample that each weight layer reads
    (``rows / batch``; Conv2d: output positions per image)."""
    from analogtrain.nn.layers import AnalogLayer

    handles = []
    for name, layer in layers:
        if isinstance(layer, AnalogLayer):
            tile = next(iter(layer.tiles()))

            def hook(mod, args, res, name=name):
                out[name] = args[0].shape[0] / batch  # tile input x: (rows, in)

            handles.append(tile.register_forward_hook(hook))
        elif isinstance(layer, nn.Conv2d):
            def hook(mod, args, res, name=name):
                out[name] = float(res[0].numel() / res.shape[1]) if res.dim() == 4 else float(res[0].numel())

            handles.append(layer.register_forward_hook(hook))
        else:  # nn.Linear on (..., in)
            def hook(mod, args, res, name=name):
                out[name] = args[0].numel() / args[0].shape[-1] / batch

            handles.append(layer.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def derive_costs(layers: list[tuple[str, nn.Module]], n_vec: dict[str, float], mvm_cycles: float,
                 pulse_cycles: float, digital_bl: int) -> StageCosts:
    """Per-sample costs of a stage from its weight layers and their measured vectors per sample."""
    from analogtrain.nn.layers import AnalogLayer

    f, u = 0.0, 0.0
    for name, layer in layers:
        v = float(n_vec.get(name, 0.0))
        f += v * mvm_cycles
        if isinstance(layer, AnalogLayer):
            bl = int(next(iter(layer.tiles())).tile_cfg.update.desired_bl)
        else:
            bl = int(digital_bl)
        u = max(u, v * bl * pulse_cycles)
    return StageCosts(f=f, b=f, u=u)


class Clock:
    """The timeline of S stages: when each is free, how long it was busy, when ops ended.

    ``ends`` maps ``(kind, stage, t)`` to the end time of ops whose result another stage still needs
    (popped when used). All numbers are floats in cycles; ``state_dict`` round-trips exactly.
    """

    def __init__(self, S: int):
        self.S = int(S)
        self.free = [0.0] * self.S
        self.busy = [0.0] * self.S
        self.now = 0.0  # largest end time so far = cycles elapsed
        self.ends: dict[tuple[str, int, int], float] = {}

    def start(self, s: int, ready: float) -> float:
        return max(self.free[s], ready)

    def run(self, s: int, start: float, duration: float) -> float:
        end = start + float(duration)
        self.free[s] = end
        self.busy[s] += float(duration)
        self.now = max(self.now, end)
        return end

    def bubble_fraction(self) -> float:
        """Idle share of all stage-cycles so far: 1 − Σ busy / (S · cycles)."""
        if self.now <= 0:
            return 0.0
        return 1.0 - sum(self.busy) / (self.S * self.now)

    def state_dict(self) -> dict:
        return {"free": list(self.free), "busy": list(self.busy), "now": self.now,
                "ends": [[k[0], k[1], k[2], v] for k, v in self.ends.items()]}

    def load_state_dict(self, st: dict) -> None:
        self.free, self.busy, self.now = list(st["free"]), list(st["busy"]), float(st["now"])
        self.ends = {(k, int(s), int(t)): float(v) for k, s, t, v in st["ends"]}


def sync_minibatch_cycles(S: int, M: int, F: float, B: float, U: float) -> float:
    """Cycles of one GPipe mini-batch with equal stages: per-micro-batch forward F and backward B,
    mini-batch update U: ``(M + S - 1)(F + B) + U``."""
    return (M + S - 1) * (F + B) + U


def sync_bubble_fraction(S: int, M: int, F: float, B: float, U: float) -> float:
    """Idle share of a GPipe mini-batch with equal stages: ``(S-1)(F+B) / ((M+S-1)(F+B) + U)``."""
    return (S - 1) * (F + B) / sync_minibatch_cycles(S, M, F, B, U)


def async_period(costs: list[StageCosts], n: float) -> float:
    """Steady-state cycles per micro-batch of n samples under async 1F1B: ``n · max_s (f + b + u)``."""
    return n * max(c.f + c.b + c.u for c in costs)

