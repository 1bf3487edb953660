#!/usr/bin/env python
"""Benchmark one Swin fine-tuning step on the CPU per training algorithm (issue "Swin-ViT", part 6).

A step is what the trainer does per mini-batch: ``opt.zero_grad()``, forward, cross-entropy, backward,
``opt.step()`` (for analog algorithms: the pulsed updates and transfers of every tile). The model is the
runner's own: the Hydra config ``model=<model> algo=<algo> device=<device>`` composed from ``conf/``,
``build_model`` for Fashion-MNIST-padded inputs (1, 32, 32) and 10 classes, ``algo.prepare`` (analog
conversion, ``model.keep_digital`` from the config) and ``algo.build_optimizer``. Inputs are N(0, 1) images
(the standardised data), labels uniform.

For every (threads, batch) it times ``digital`` first and reports each algorithm's median step time over
``--repeats`` timed steps (after ``--warmup`` steps), steps/s, samples/s and the ratio to the digital
step of the same run.

Transfers of the Tiki-Taka family (``--tt-transfer``). A Swin Linear layer sees every *token* as one
vector update: a batch of B 32x32 images is B·256 tile samples in stage 0 (16x16 tokens), B·64 in stage 1
and B at the head. ``conf/algo/cttv2.yaml`` and ``agad.yaml`` transfer one column per vector update
(``units_in_mbatch: false, transfer_every: 1``): 8192 transfers per tile and step at B = 32, which is
what aihwkit does too (through the batched transfer path about as fast as ``image`` here, 6.6 against
7.2 s per c-TTv2 step at B = 32 on 2026-12-08: A's pulses dominate). ``image`` (default) sets every TT-family
algorithm to one transfer per image (``units_in_mbatch=true, transfer_every=1/B``: B transfers per tile
and step, and for c-TTv2/AGAD ``auto_granularity=0``; what ``experiment=swin_transfer_finetune`` uses);
``conf`` keeps each algorithm's config.

    .venv/bin/python scripts/bench_swin.py --quick          # batch 32, 1 thread, 3 repeats
    .venv/bin/python scripts/bench_swin.py                  # batches 32 and 128, 1 and 2 threads
    .venv/bin/python scripts/bench_swin.py --algos digital sgd cttv2 --batches 32 --threads 1 \\
        --model swin_tiny32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

ALGOS = ("digital", "sgd", "tt", "ttv2", "cttv2", "agad")
TT_FAMILY = ("tt", "ttv2", "cttv2", "agad")


def transfer_overrides(algo: str, mode: str, batch: int) -> list[str]:
    """Hydra overrides of ``--tt-transfer`` for ``algo`` (see the module docstring)."""
    if mode == "image" and algo in TT_FAMILY:
        over = ["algo.units_in_mbatch=true", f"algo.transfer_every={1.0 / batch!r}"]
        # (as the fine-tuning overlay: auto_granularity, made for per-vector reads, would divide by 1/B)
        return over + (["algo.auto_granularity=0"] if algo in ("cttv2", "agad") else [])
    return []


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from analogtrain.config.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module("analogtrain.conf", version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def make_step(algo: str, model_opt: str, device: str, batch: int, lr: float, extra: list[str], seed: int = 0):
    """A closure running one training step of the composed (model, algo) on a fixed random batch."""
    from analogtrain.algorithms.base import build_algorithm
    from analogtrain.models import build_model
    from analogtrain.utils.seeding import derive_seeds

    if algo == "digital":  # algorithm- and tile-specific overrides do not apply to the digital baseline
        extra = [o for o in extra if not o.lstrip("+~").startswith(("algo.", "tile."))]
    cfg = compose([f"model={model_opt}", f"algo={algo}", f"device={device}", f"trainer.lr={lr}", *extra])
    seeds = derive_seeds(seed)
    torch.manual_seed(seeds["init"])
    model = build_model(cfg.model, (1, 32, 32), 10)
    alg = build_algorithm(cfg, seeds)
    model = alg.prepare(model)
    model.train()
    opt = alg.build_optimizer(model, lr=lr)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def bench(algos, batches, threads, model_opt, device, lr, repeats, warmup, extra, tt_transfer="image") -> list[dict]:
    rows = []
    for nt in threads:
        torch.set_num_threads(nt)
        for b in batches:
            digital_s = None
            for a in ["digital"] + [x for x in algos if x != "digital"]:
                step = make_step(a, model_opt, device, b, lr, [*transfer_overrides(a, tt_transfer, b), *extra])
                for _ in range(warmup):
                    step()
                times = [step() for _ in range(repeats)]
                med = statistics.median(times)
                if a == "digital":
                    digital_s = med
                    if "digital" not in algos:
                        continue
                row = {"threads": nt, "batch": b, "algo": a,
                       "transfer": tt_transfer if a in TT_FAMILY else "-", "step_ms": med * 1e3, "steps_per_s": 1.0 / med,
                       "samples_per_s": b / med, "ratio_vs_digital": med / digital_s,
                       "min_ms": min(times) * 1e3, "max_ms": max(times) * 1e3}
                rows.append(row)
                print(f"  threads {nt} batch {b:4d} {a:8s} {row['step_ms']:9.1f} ms  "
                      f"{row['steps_per_s']:7.2f} steps/s  x{row['ratio_vs_digital']:.2f}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| threads | batch | algo | TT transfers | step (ms, median) | steps/s | samples/s | × digital |",
             "|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['batch']} | {r['algo']} | {r['transfer']} | {r['step_ms']:.1f} | "
                     f"{r['steps_per_s']:.2f} | "
                     f"{r['samples_per_s']:.0f} | {r['ratio_vs_digital']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 128])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--model", default="swin", help="conf/model option (swin, swin_tiny32, ...)")
    ap.add_argument("--device", default="softbounds", help="conf/device option")
    ap.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (sets the pulse density)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--tt-transfer", choices=("image", "conf"), default="image",
                    help="TT-family transfer period: one per image (default) or each algorithm's conf")
    ap.add_argument("--quick", action="store_true", help="batch 32, 1 thread, 3 repeats, 1 warm-up step")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every algorithm, e.g. "
                    "tile.backend=reference (digital runs get only the non-tile, non-algo ones)")
    a = ap.parse_args(argv)
    if a.quick:
        a.batches, a.threads, a.repeats, a.warmup = [32], [1], 3, 1
    print(f"model={a.model} device={a.device} lr={a.lr} tt-transfer={a.tt_transfer} torch {torch.__version__}, "
          f"{a.repeats} repeats after {a.warmup} warm-up steps", file=sys.stderr)
    rows = bench(a.algos, a.batches, a.threads, a.model, a.device, a.lr, a.repeats, a.warmup, a.overrides,
                 a.tt_transfer)
    print(table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "device": a.device, "lr": a.lr, "tt_transfer": a.tt_transfer,
                       "overrides": a.overrides, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
