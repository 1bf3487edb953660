#!/usr/bin/env python
"""Micro-benchmark of the pulsed update alone (one ``DeviceArray.update`` call), next to a digital step.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_update.py [--size 512] [--batch 64] [--lr 0.01 0.5] [--mode aggregated]

Prints, per lr, the median time of one update of an O×I softbounds array with batch B (inputs as in
``bench_tile.py``: x ~ U(0, 1), d = N(0, 1)/B), the pulses it applied, ns per pulse, and the median of
a digital ``nn.Linear`` forward+backward+SGD step measured in the same run (the ratio denominator).
``--no-noise`` sets dw_min_std = 0 (no cycle-to-cycle normals: the pulse-train / device-step cost).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def median_ms(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, nargs="+", default=[0.01, 0.5])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--device", default="softbounds")
    ap.add_argument("--no-noise", action="store_true", help="dw_min_std = 0")
    ap.add_argument("--backend", default="compiled", choices=["compiled", "reference"])
    ap.add_argument("--mode", default="pulsed", choices=["pulsed", "aggregated"],
                    help="tile.update_mode: pulsed (one device step and normal per pulse) or aggregated")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from analogtrain import ops
    from analogtrain.devices import device_from_config
    from analogtrain.tiles.array import DeviceArray, update_spec
    from analogtrain.tiles.config import UpdateConfig

    n, B = a.size, a.batch
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(B, n, generator=gen)
    d = torch.randn(B, n, generator=gen) / B
    lin = torch.nn.Linear(n, n, bias=False)
    opt = torch.optim.SGD(lin.parameters(), lr=0.01)
    xg = x.clone().requires_grad_(True)

    def digital():
        opt.zero_grad(set_to_none=True)
        (lin(xg) * d).sum().backward()
        opt.step()

    dig = median_ms(digital, 20, warmup=3)
    node = {"name": a.device}
    if a.no_noise:
        node["dw_min_std"] = 0.0
    cfg = device_from_config(node)
    spec = update_spec(UpdateConfig(), a.mode)
    ops.set_backend(a.backend)
    print(f"mode {a.mode}  load {os.getloadavg()[0]:.2f}  threads {torch.get_num_threads()}  digital step {dig:.3f} ms")
    for lr in a.lr:
        arr = DeviceArray(cfg, n, n, seed_device=1, seed_pulse=2)
        pulses = arr.update(x, d, lr, spec)
        npulse = float(pulses.sum())
        t = median_ms(lambda: arr.update(x, d, lr, spec), a.reps, warmup=0)
        print(f"lr {lr:<6g} update {t:9.3f} ms  pulses {npulse:11.0f}  {1e6 * t / max(npulse, 1):7.2f} ns/pulse  "
              f"x{t / dig:6.1f} digital step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
