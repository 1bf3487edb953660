#!/usr/bin/env python
"""The pulsed update of one large tile against the memory roofline (issue 5's GPU goal).

    .venv/bin/python scripts/bench_gpu.py                          # CUDA: 4096×4096, batch 1024
    .venv/bin/python scripts/bench_gpu.py --device cpu --size 1024 --batch 64   # the same on the CPU

Goal (issue 5): on a GPU, the update of a 4096×4096 tile with batch 1024 within 2× of the time it takes
to read and write the tile's state once at the card's measured copy bandwidth.

What it measures, in one run:

* copy bandwidth: the median time of ``dst.copy_(src)`` of a 256 MiB float32 buffer on the device;
  bytes moved = 2 × size (read + write);
* the tile state: the weights (read + written), the nine parameter planes (read) and the pulse-count
  map (written) of an O×I float32 tile, i.e. (2 + 9 + 1)·O·I·4 bytes; its roofline time = bytes /
  bandwidth;
* the update: ``ops.pulsed_update`` (compiled kernel; ``--backend reference`` for the torch oracle)
  with softbounds, the default update settings (BL 31, UM, UBLM) and inputs as in ``bench_tile.py``
  (x ~ U(0, 1), d = N(0, 1)/B), for lr 0.01 (sparse pulses) by default, in the pulsed and the
  aggregated update modes; medians over ``--reps`` calls after one warm-up. ``--lrs 0.01 0.5`` adds
  the dense regime (slow in the pulsed mode at the default size).

Prints a table: update time, pulses, ns per pulse, and the ratio update / roofline (goal ≤ 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def median_ms(fn, dev: torch.device, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def copy_bandwidth(dev: torch.device, mib: int = 256, reps: int = 10) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    n = mib * (1 << 20) // 4
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), dev, reps)
    return 2 * n * 4 / (ms * 1e-3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--size", type=int, default=4096, help="square tile size")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01],
                    help="learning rates (0.01: sparse pulses; 0.5: dense, ~25 coincidences per element and "
                         "sample: at 4096²×1024 that is ~4e11 pulses in the pulsed mode, minutes per call)")
    ap.add_argument("--modes", nargs="+", default=["pulsed", "aggregated"], choices=["pulsed", "aggregated"])
    ap.add_argument("--backend", default="compiled", choices=["compiled", "reference"])
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args(argv)

    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --device cpu for the CPU roofline)", file=sys.stderr)
        return 0
    from analogtrain import ops
    from analogtrain.devices import device_from_config, sample_device

    n = a.size
    s = sample_device(device_from_config({"name": "softbounds"}), n, n, 1)
    params = s.params.to(dev).contiguous()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(a.batch, n, generator=gen).to(dev)
    d = (torch.randn(a.batch, n, generator=gen) / a.batch).to(dev)
    w = torch.zeros(n, n, device=dev)

    bw = copy_bandwidth(dev)
    state_bytes = (2 + 9 + 1) * n * n * 4
    roof_ms = 1e3 * state_bytes / bw
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(f"\n{name}: copy bandwidth {bw / 1e9:.1f} GB/s; tile state {state_bytes / 2**20:.0f} MiB "
          f"(w read+write, 9 parameter planes, pulse map) -> roofline {roof_ms:.2f} ms\n")
    print("| size | batch | lr | mode | update ms | pulses | ns/pulse | update / roofline |")
    print("|---|---|---|---|---|---|---|---|")
    for lr in a.lrs:
        for mode in a.modes:
            spec = dataclasses.replace(ops.UpdateSpec(), aggregate=(mode == "aggregated"))
            offset = [0]
            out = {}

            def step():
                offset[0] += 1
                out["p"] = ops.pulsed_update(w, None, params, s.gparams, x, d, lr, s.dw, spec, 7, offset[0],
                                             backend=a.backend)

            w.zero_()
            ms = median_ms(step, dev, a.reps)
            pulses = float(out["p"].sum())
            print(f"| {n}x{n} | {a.batch} | {lr:g} | {mode} | {ms:.2f} | {pulses:.3g} | "
                  f"{1e6 * ms / max(pulses, 1):.3f} | {ms / roof_ms:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
