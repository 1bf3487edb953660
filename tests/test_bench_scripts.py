"""The benchmark scripts run end to end on a tiny problem and print what they promise."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from analogtrain import ops

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_gpu_on_cpu_reports_the_roofline_and_equal_pulse_counts(capsys):
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled CPU kernel")
    assert _load("bench_gpu").main(["--device", "cpu", "--size", "96", "--batch", "8", "--reps", "1",
                                    "--lrs", "0.01", "0.5"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"copy bandwidth [0-9.]+ GB/s; tile state", out)
    rows = [r.split("|")[1:-1] for r in out.splitlines() if r.startswith("| 96x96")]
    assert len(rows) == 4
    by = {(float(r[2]), r[3].strip()): r for r in rows}
    for lr in (0.01, 0.5):  # same seed and offsets: the aggregated mode applies the same pulses
        assert float(by[(lr, "pulsed")][5]) == float(by[(lr, "aggregated")][5]) > 0
        assert float(by[(lr, "pulsed")][7]) > 0  # update / roofline
    assert float(by[(0.5, "pulsed")][5]) > 10 * float(by[(0.01, "pulsed")][5])  # dense vs sparse regime


def test_bench_gpu_without_cuda_exits_cleanly(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert _load("bench_gpu").main([]) == 0
    assert "no CUDA device" in capsys.readouterr().err


def test_bench_tile_tiny_prints_both_modes_and_ratios(capsys):
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled CPU kernel")
    assert _load("bench_tile").main(["--sizes", "32", "--algos", "sgd", "--threads", "1", "--reps", "1",
                                     "--backends", "compiled", "--regimes", "sparse"]) == 0
    out = capsys.readouterr().out
    assert "CPU kernel: " in out
    rows = [r for r in out.splitlines() if r.startswith("|   32x32")]
    modes = {r.split("|")[3].strip() for r in rows}
    assert modes == {"-", "pulsed", "aggregated"}
    for r in rows:
        ratio, paired = (float(c) for c in r.split("|")[-3:-1])
        assert ratio > 0 and paired > 0  # the ratio columns (of medians; per-step against a paired digital step)


def test_bench_update_reports_the_same_pulses_in_both_modes(capsys):
    """bench_update.py --mode: the aggregated mode applies the pulsed mode's pulse counts (same seeds and
    offsets), and --no-noise keeps them (the noise acts on the steps, not on the trains)."""
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled CPU kernel")
    bench = _load("bench_update")
    pulses = {}
    for mode, extra in (("pulsed", []), ("aggregated", []), ("pulsed", ["--no-noise"])):
        assert bench.main(["--size", "48", "--batch", "8", "--reps", "1", "--lr", "0.01", "0.5",
                           "--mode", mode, *extra]) == 0
        out = capsys.readouterr().out
        assert f"mode {mode}" in out
        pulses[(mode, bool(extra))] = [float(p) for p in re.findall(r"pulses\s+([0-9]+)", out)]
    assert len(pulses[("pulsed", False)]) == 2
    assert pulses[("pulsed", False)] == pulses[("aggregated", False)] == pulses[("pulsed", True)]
    sparse, dense = pulses[("pulsed", False)]
    assert dense > 10 * sparse > 0
