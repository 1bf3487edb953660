#!/usr/bin/env python
"""Benchmark one analog training step of a single layer: forward, backward and update, per algorithm.

For each layer size (default 512×512, plus 256×256 and 1024×1024), algorithm (sgd, tt, cttv2, agad on
``device=softbounds``), learning-rate regime (``sparse``: lr 0.01, few pulses; ``dense``: lr 0.5, BL
saturated), backend (``compiled`` C++ kernel vs the pure-torch ``reference``) and thread count (1, 2),
the script times ``forward`` (y = layer(x)), ``backward`` ((y·g).sum().backward()) and ``update``
(``opt.step()``: the pulsed update(s) and transfers) with the trainer's own objects (``build_algorithm``
→ ``prepare`` → ``build_optimizer``), and a digital ``nn.Linear`` + ``torch.optim.SGD`` step in the same
run. It prints medians (ms) and the ratio of the whole analog step to the digital step (``ratio``: of the
medians; ``paired``: the median of per-step ratios against a digital step timed right before each analog
step, which a machine whose speed drifts during the run, e.g. a shared host, cannot skew). Each analog
cell runs in both update modes (``--modes``): ``pulsed`` (aihwkit: one device step and one normal per
pulse) and ``aggregated`` (same pulse counts; each element's exact mean and variance carried through its
pulses of the call, one normal per element: ``tile.update_mode=aggregated``, linear-step devices).

Inputs: x ~ U(0, 1) (sigmoid-like activations), and for every step a fresh g = N(0, 1)/B (the gradient
of a mean-reduced loss; a seeded sequence, the same for every cell), so with the default update (BL 31,
UM + UBLM) lr 0.01 gives k ≈ 0.5 expected coincidences at the largest element (sparse) and lr 0.5 gives
k ≈ 25 (dense). (Not one fixed g: it would move every weight the same way on every step, so that after
~20 steps the outputs pass the ADC bound and iterative bound management repeats the forward reads — a
512×512 SGD forward 1.3 → 3.9 ms over 60 steps —, a cost that training, whose gradients change from
step to step, does not pay.)

Goals (issue 5, this 2-core CPU, 1 thread): analog SGD step ≤ 3× digital, c-TTv2 step ≤ 5× digital,
dense-pulse update ≤ 20 ms for 512×512×64.

    .venv/bin/python scripts/bench_tile.py --quick            # 512×512 only, compiled, 1 thread
    .venv/bin/python scripts/bench_tile.py                    # everything (the reference is slow)
    .venv/bin/python scripts/bench_tile.py --algos sgd cttv2 --sizes 512 --threads 1 --backends compiled
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LR = {"sparse": 0.01, "dense": 0.5}
# c-TTv2 / AGAD as aihwkit's build_config("c-ttv2" / "agad") and the Capacitor/Idealized presets set them:
# auto-scaled fast lr 0.1 (about 0.1·BL pulses at the largest element of a sample) and one column read
# per sample (transfer_every 1, units_in_mbatch false: as conf/algo). conf/algo/cttv2.yaml and agad.yaml
# (the ReRAM soft-bounds presets) set fast_lr 0.5, five times the pulses on A; the benchmark keeps 0.1 so
# that its rows stay comparable with the numbers quoted since the goal was set.
ALGO_OVERRIDES = {"cttv2": {"auto_scale": True, "fast_lr": 0.1}, "agad": {"auto_scale": True, "fast_lr": 0.1}}


def algo_node(name: str) -> dict:
    """The ``algo`` node of ``conf/algo/<name>.yaml`` (its values; schema defaults fill the rest)."""
    from omegaconf import OmegaConf

    for base in (ROOT / "conf" / "algo", ):
        p = base / f"{name}.yaml"
        if p.is_file():
            node = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
            node.pop("defaults", None)
            node.update(ALGO_OVERRIDES.get(name, {}))
            return node
    return {"name": name}


def make_step(algo: str, size: tuple[int, int], lr: float, backend: str, seed: int = 0, mode: str = "pulsed"):
    """(layer, optimizer) of one analog layer O×I under ``algo`` with ``tile.update_mode=mode``, or None
    when the algorithm is missing."""
    from omegaconf import OmegaConf

    from analogtrain.algorithms import build_algorithm
    from analogtrain.algorithms.base import ALGORITHMS
    from analogtrain.tiles.config import TileConfig

    import analogtrain.algorithms  # noqa: F401  (registers what exists)

    if algo not in ALGORITHMS:
        return None
    out_size, in_size = size
    cfg = OmegaConf.create({
        "algo": algo_node(algo),
        "device": {"name": "softbounds"},
        "tile": OmegaConf.structured(TileConfig(backend=backend, update_mode=mode)),
        "model": {"name": "bench"},
    })
    alg = build_algorithm(cfg, {"device": seed + 1, "pulse": seed + 2})
    torch.manual_seed(seed)
    layer = alg.prepare(torch.nn.Sequential(torch.nn.Linear(in_size, out_size, bias=False)))
    opt = alg.build_optimizer(layer, lr=lr)
    return layer, opt


def gradients(batch: int, n_out: int, seed: int = 1):
    """The output gradients of successive steps: an endless seeded sequence of N(0, 1)/B, (B, n_out)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(batch, n_out, generator=gen) / batch


def _one_step(layer, opt, x, g) -> tuple[float, float, float]:
    """(forward, backward, update) seconds of one training step. x requires grad, as the input of a
    hidden layer: backward also forms dL/dx (the analog backward read)."""
    opt.zero_grad(set_to_none=True)
    x.grad = None
    t0 = time.perf_counter()
    y = layer(x)
    t1 = time.perf_counter()
    (y * g).sum().backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


def time_step(layer, opt, x, grads, reps: int, warmup: int = 1, digital=None,
              warm_each: bool = False) -> dict[str, float]:
    """Median ms of forward / backward / update / step over ``reps`` steps (after ``warmup``); step r's
    output gradient is the next of ``grads`` (``gradients``), shared with its digital pair partner.

    With ``digital`` = (layer, optimizer) of the digital baseline, every timed step is paired with a
    digital step timed just before it, and ``paired`` is the median of the per-pair ratios step / digital
    step: a shared machine whose speed drifts over seconds (other tenants, clock changes) moves both
    members of a pair alike, so ``paired`` stays put where the ratio of separately measured medians would
    not. Each member is the second of two steps of its model (``warm_each`` runs the untimed analog one;
    the reference backend, seconds per step, skips it), so both run with warm caches, as in their own
    back-to-back loops."""
    x = x.detach().clone().requires_grad_(True)
    out = {"forward": [], "backward": [], "update": [], "step": [], "ratio": []}
    for r in range(warmup + reps):
        g = next(grads)
        dig = None
        if digital is not None:
            for _ in range(2):
                dig = sum(_one_step(*digital, x, g))
        if warm_each and digital is not None:
            _one_step(layer, opt, x, next(grads))
        f, b, u = _one_step(layer, opt, x, g)
        if r >= warmup:
            out["forward"].append(f)
            out["backward"].append(b)
            out["update"].append(u)
            out["step"].append(f + b + u)
            if dig is not None:
                out["ratio"].append((f + b + u) / dig)
    res = {k: 1e3 * statistics.median(v) for k, v in out.items() if v and k != "ratio"}
    if out["ratio"]:
        res["paired"] = statistics.median(out["ratio"])
    return res


def digital_model(size, lr):
    """The digital baseline: nn.Linear (no bias) + torch.optim.SGD, O×I."""
    out_size, in_size = size
    torch.manual_seed(0)
    layer = torch.nn.Linear(in_size, out_size, bias=False)
    return layer, torch.optim.SGD(layer.parameters(), lr=lr)


# issue 5's goals on a 2-core CPU, one thread, for the 512×512 layer with batch 64: (algo, what, limit);
# "*": every algorithm's dense-pulse update
GOALS = (("sgd", "step / digital step", 3.0), ("cttv2", "step / digital step", 5.0),
         ("*", "dense update (ms)", 20.0))


def goal_lines(rows: list[dict]) -> list[str]:
    """One line per measured cell that a goal of issue 5 (``GOALS``) speaks about: the compiled
    backend, 512×512, one thread; the step goals on both ratios (``paired``, which a drifting host cannot
    skew, and the ratio of the medians), the update goal on the dense-pulse regime's median update."""
    out = []
    for algo, what, limit in GOALS:
        for r in rows:
            if (r["backend"], r["size"], r["threads"]) != ("compiled", 512, 1) or algo not in ("*", r["algo"]):
                continue
            if what.startswith("dense"):
                if r["regime"] != "dense" or r["algo"] == "digital":
                    continue
                val, got = r["update"], f"{r['update']:.2f} ms"
            else:
                val, got = r["paired"], f"paired {r['paired']:.2f}×, ratio of medians {r['ratio']:.2f}×"
            out.append(f"{r['algo']} {r['mode']} {r['regime']}: {what} ≤ {limit:g}: {got} — "
                       f"{'met' if val <= limit else 'not met'}")
    return out


def digital_step(size, x, grads, lr, reps) -> dict[str, float]:
    return time_step(*digital_model(size, lr), x, grads, reps, warmup=3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512×512, compiled only, 1 thread, few reps")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 256, 1024], help="square layer sizes")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--algos", nargs="+", default=["sgd", "tt", "cttv2", "agad"])
    ap.add_argument("--regimes", nargs="+", default=["sparse", "dense"], choices=list(LR))
    ap.add_argument("--backends", nargs="+", default=["compiled", "reference"],
                    choices=["compiled", "reference"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--modes", nargs="+", default=["pulsed", "aggregated"], choices=["pulsed", "aggregated"],
                    help="tile.update_mode: pulsed (one device step and one normal per pulse, aihwkit) or "
                         "aggregated (moments of each element's pulses through the call, one normal each)")
    ap.add_argument("--reps", type=int, default=7, help="timed steps per compiled cell (after 1 warm-up step)")
    ap.add_argument("--ref-reps", type=int, default=1, help="timed steps per reference cell (no warm-up)")
    ap.add_argument("--ref-threads", type=int, nargs="+", default=[1], help="thread counts for the reference")
    ap.add_argument("--max-ref-size", type=int, default=512, help="skip the reference above this size")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    a = ap.parse_args(argv)
    if a.quick:
        a.sizes, a.backends, a.threads, a.reps = [512], ["compiled"], [1], 3

    from analogtrain import ops

    if "compiled" in a.backends and not ops.compiled_available("cpu"):
        print("compiled kernel unavailable: benchmarking the reference only", file=sys.stderr)
        a.backends = [b for b in a.backends if b != "compiled"] or ["reference"]

    rows, notes = [], []
    for threads in a.threads:
        torch.set_num_threads(threads)
        for n in a.sizes:
            size = (n, n)
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(a.batch, n, generator=gen)
            for regime in a.regimes:
                lr = LR[regime]
                dig = digital_step(size, x, gradients(a.batch, n), lr, reps=max(a.reps, 10))
                dig_model = digital_model(size, lr)  # the pair partner of every analog step below
                rows.append(dict(size=n, algo="digital", mode="-", regime=regime, backend="torch", threads=threads,
                                 **dig, ratio=1.0, paired=1.0))
                for algo, mode in [(al, mo) for al in a.algos for mo in a.modes]:
                    for backend in a.backends:
                        if backend == "reference" and (n > a.max_ref_size or threads not in a.ref_threads):
                            continue
                        made = make_step(algo, size, lr, backend, mode=mode)
                        if made is None:
                            msg = f"algo '{algo}' is not registered yet: skipped"
                            if msg not in notes:
                                notes.append(msg)
                            continue
                        layer, opt = made
                        if backend == "compiled":
                            t = time_step(layer, opt, x, gradients(a.batch, n), a.reps, warmup=1, digital=dig_model,
                                          warm_each=True)
                        else:  # pure torch: nothing to warm up, and one step can take seconds
                            t = time_step(layer, opt, x, gradients(a.batch, n), a.ref_reps, warmup=0,
                                          digital=dig_model)
                        rows.append(dict(size=n, algo=algo, mode=mode, regime=regime, backend=backend,
                                         threads=threads, **t, ratio=t["step"] / dig["step"]))
                        r = rows[-1]
                        print(f"  {n:5d} {algo:7s} {mode:10s} {regime:6s} {backend:9s} t={threads}  fwd {r['forward']:8.2f}  "
                              f"bwd {r['backward']:8.2f}  upd {r['update']:9.2f}  step {r['step']:9.2f} ms  "
                              f"x{r['ratio']:6.1f} (paired x{r['paired']:5.1f})", file=sys.stderr, flush=True)

    paths = ""
    if "compiled" in a.backends:
        fast = int(torch.ops.analogtrain.cpu_fast_paths())
        paths = "; CPU kernel: " + {
            1: "AVX-512 fast paths",
            2: "AVX2 paths (pulsed and one-sample calls: the 8-lane fused path; aggregated batches: 8-lane vectors)",
        }.get(fast, "portable paths (aggregated batches: 8-lane vectors; the rest: the generic job path)")
    print(f"\nOne training step of one layer, batch {a.batch}, device softbounds; medians in ms; "
          f"ratio = step / digital step (same size, regime, threads); paired = median over steps of step / the digital step timed just before it{paths}\n")
    hdr = f"| {'size':>9} | {'algo':7} | {'mode':10} | {'lr':13} | {'backend':9} | thr | {'forward':>8} | {'backward':>8} | " \
          f"{'update':>9} | {'step':>9} | {'ratio':>6} | {'paired':>6} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['size']:4d}x{r['size']:<4d} | {r['algo']:7} | {r['mode']:10} | {r['regime']:6} {LR[r['regime']]:<6} | "
              f"{r['backend']:9} | {r['threads']:3d} | {r['forward']:8.2f} | {r['backward']:8.2f} | "
              f"{r['update']:9.2f} | {r['step']:9.2f} | {r['ratio']:6.1f} | {r['paired']:6.1f} |")
    goals = goal_lines(rows)
    if goals:
        print("\nGoals (issue 5; 512×512, batch 64, 1 thread, compiled):")
        for line in goals:
            print(f"  {line}")
    for msg in notes:
        print(f"\nnote: {msg}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
