"""Per-stage operation sequences of the three schedules, and the weight versions they imply.

A schedule is, for every stage s = 0..S-1 (0 = input side), the ordered list of its operations:

* ``("F", t)`` forward of micro-batch t through the stage,
* ``("B", t)`` backward of micro-batch t (reads the stage's weights at that moment; caches (x, d)),
* ``("U", t)`` the stage's optimizer step (analog pulsed update of its tiles, SGD of its digital
  parameters) on everything its backwards cached since its previous update; ``t`` names the last
  micro-batch included.

Dependencies between stages are only data: ``F_s(t)`` needs ``F_{s-1}(t)``, ``B_s(t)`` needs
``B_{s+1}(t)`` (the last stage: the loss of t). A stage's weights are touched only by its own ops, so
**the weight version every op sees is fixed by its own stage's op order alone** — any execution order
that respects the data dependencies (the clock order of :mod:`analogtrain.pipeline.clock`, for one)
gives the same numbers. The *version* of stage s is the number of updates it has applied.

SYNC (GPipe, one flush per mini-batch of micro-batches t0..t0+M-1), every stage::

    F(t0) F(t0+1) ... F(t0+M-1)  B(t0) ... B(t0+M-1)  U(t0+M-1)

All forwards and backwards of the mini-batch see the same version v; the single update produces v+1
from the concatenated (x, d) of all M micro-batches — exactly ordinary training on the mini-batch.
(Backwards run in ascending order so the concatenation order equals the mini-batch order.)
``none`` is the same with M = 1.

ASYNC (PipeDream 1F1B without weight stashing, no flush; t counts micro-batches since the stream began),
stage s with ``w = S - s`` warm-up forwards::

    F(0) ... F(w-1)  B(0) U(0) F(w)  B(1) U(1) F(w+1)  B(2) U(2) F(w+2) ...

i.e. at most S - s micro-batches are in flight at stage s. Versions, derived from that order:

* ``B(t)`` comes after ``U(t-1)``: the backward of t sees version **t** (the current weights);
* ``F(t)`` for t >= w comes right after ``U(t-w)``: version **t - w + 1 = t - (S-1-s)**; for t < w: 0;
* so the forward of t saw weights **min(t, S-1-s)** updates older than its backward: S-1 at the input
  stage, 0 at the last stage (its forward and backward are back to back). The update after B(t) uses
  the activations x of the (stale) forward and the d computed by later stages with *their* current
  weights; analog hardware cannot stash old weights, so there is no correction.

When the stream ends (``end``), forwards of t >= end are skipped and each stage finishes its backlog of
backwards/updates (the drain).
"""

from __future__ import annotations

__all__ = ["SyncSchedule", "AsyncSchedule", "async_versions", "Op"]

Op = tuple[str, int]


class SyncSchedule:
    """One flush of micro-batches ``ts`` (ascending ints) through S stages; ``none`` = one micro-batch."""

    def __init__(self, S: int, ts: list[int]):
        self.S, self.ts = int(S), list(ts)
        self.ops = [("F", t) for t in self.ts] + [("B", t) for t in self.ts] + [("U", self.ts[-1])]

    def op(self, s: int, k: int) -> Op | None:
        """The k-th op of stage s (None past the end)."""
        return self.ops[k] if k < len(self.ops) else None

    def last_op(self, s: int) -> Op:
        return self.ops[-1]


class AsyncSchedule:
    """1F1B sequences of a stream of micro-batches ``base, base+1, ...`` (``end``: first t not in it)."""

    def __init__(self, S: int, base: int = 0, end: int | None = None):
        self.S, self.base, self.end = int(S), int(base), end

    def op(self, s: int, k: int) -> Op | None:
        """The k-th op of stage s, or ``("skip", t)`` for a forward past the end of the stream, or None
        when the stage has nothing left (only with an ``end``)."""
        w = self.S - s
        if k < w:
            t = self.base + k
            kind = "F"
        else:
            q, r = divmod(k - w, 3)
            t = self.base + (q if r < 2 else q + w)
            kind = ("B", "U", "F")[r]
        if self.end is not None and t >= self.end:
            if kind == "F":
                return ("skip", t)
            return None
        return (kind, t)


def async_versions(S: int, s: int, t: int) -> tuple[int, int]:
    """(version seen by F(t), version seen by B(t)) at stage s of an async stream, counted in updates
    since the stream's start (t relative to it): ``(max(0, t - (S-1-s)), t)``."""
    return max(0, t - (S - 1 - s)), t
