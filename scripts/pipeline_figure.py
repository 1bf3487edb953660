"""Pipeline-parallel analog training: loss vs samples and vs clock cycles for none / sync / async.

Reproduces the expectations of Wu et al. 2024 ("Pipeline gradient-based model training on analog
in-memory accelerators", paper-claims §1.6, §2 item 14) on a 3-stage MLP with asymmetric soft-bounds
devices, for analog SGD and Tiki-Taka:

* async ≈ sync per sample (stale forwards cost little);
* async needs fewer clock cycles: ≈ S× fewer than no pipeline, (M+S-1)/M× fewer than GPipe plus its
  update flush (see analogtrain.pipeline.clock);
* analog SGD keeps its asymmetry floor under every schedule, TT goes below it.

The runs use the project's own config (``conf/experiment/pipeline_{synthetic,digits}.yaml`` composed
over ``conf/train.yaml``), data, models and algorithms, and drive ``PipelineExecutor`` directly (the
trainer is not needed to draw curves against samples and cycles)::

    python scripts/pipeline_figure.py                # both problems, writes outputs/pipeline_figure.png
    python scripts/pipeline_figure.py --quick        # fewer samples (CI smoke)
    python scripts/pipeline_figure.py --problems synthetic --out /tmp/p.png

Prints a table of the final test loss, cycles per sample and the speed-ups; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBLEMS = {"synthetic": "pipeline_synthetic", "digits": "pipeline_digits"}
MODES = ("none", "sync", "async")
# algo=<name> overrides. TT: transfers counted in samples (one column of A onto C every 2 samples) so that
# every schedule transfers equally often per sample; A learns 8x faster than the SGD lr (fast_lr), C is
# written with a small fixed lr (transfer_lr, not scaled) — tuned on these two problems (sync runs).
ALGOS = {
    "digital": [],  # floating-point reference (mode none only)
    "sgd": [],
    "tt": ["algo.units_in_mbatch=false", "algo.transfer_every=2", "algo.fast_lr=8.0", "algo.scale_transfer_lr=false"],
}
TRANSFER_LR = {"synthetic": 0.01, "digits": 0.02}


def algo_overrides(problem: str, algo: str) -> list[str]:
    return ALGOS[algo] + ([f"algo.transfer_lr={TRANSFER_LR[problem]}"] if algo == "tt" else [])


def compose(exp: str, algo: str, extra: list[str]):
    """``conf/train.yaml`` + ``experiment=<exp>`` + ``algo=<algo>``; returns (cfg, pipeline node).

    Works before and after ``trainer.pipeline`` exists in the trainer schema: without it, the overlay's
    ``trainer.pipeline`` block is lifted out and the rest of the overlay merged over the base config."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from analogtrain.config.schema import register_configs

    register_configs()
    overrides = [f"algo={algo}", "logger=none", *extra]
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        try:
            cfg = hcompose("train", overrides=[f"experiment={exp}", *overrides])
            return cfg, cfg.trainer.pipeline
        except Exception:  # trainer schema without the pipeline field (before integration)
            raw = OmegaConf.load(ROOT / "conf" / "experiment" / f"{exp}.yaml")
            groups = []
            for d in raw.pop("defaults", []):
                for k, v in (d.items() if hasattr(d, "items") else []):
                    groups.append(f"{k.replace('override /', '')}={v}")
            pipe = raw.trainer.pop("pipeline")
            cfg = hcompose("train", overrides=[*groups, *overrides])
            with open_dict(cfg):
                cfg = OmegaConf.merge(cfg, raw)
                # command-line overrides win over the overlay
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o for o in overrides if "=" in o and "." in
                                                                   o.split("=")[0]]))
            return cfg, pipe


@torch.no_grad()
def evaluate(model, data, loss_name: str) -> tuple[float, float]:
    import torch.nn.functional as F

    model.eval()
    total, correct, n = 0.0, 0, 0
    for x, y in data.eval_batches("test"):
        out = model(x)
        if loss_name == "cross_entropy":
            total += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
        else:
            total += float(F.mse_loss(out, y, reduction="sum")) / out[0].numel()
        n += len(y)
    model.train()
    return total / n, correct / n


def run_one(problem: str, algo: str, mode: str, max_samples: int | None, points: int,
            extra: list[str] | None = None) -> dict:
    """One training run; returns the curve [(samples, cycles, test loss, test acc)] and the summary."""
    import torch.nn.functional as F

    from analogtrain.algorithms.base import build_algorithm
    from analogtrain.data import build_data
    from analogtrain.models import build_model
    from analogtrain.pipeline import PipelineExecutor, pipeline_from_config
    from analogtrain.utils.seeding import derive_seeds, seed_everything

    cfg, pipe = compose(PROBLEMS[problem], algo, algo_overrides(problem, algo) + list(extra or []))
    pcfg = pipeline_from_config(pipe)
    pcfg.mode = mode
    seeds = derive_seeds(int(cfg.seed))
    data = build_data(cfg.data, seeds["data"])
    torch.manual_seed(seeds["init"])
    model = build_model(cfg.model, data.input_shape, data.num_outputs)
    algorithm = build_algorithm(cfg, seeds)
    model = algorithm.prepare(model)
    seed_everything(seeds["pulse"])
    opt = algorithm.build_optimizer(model, lr=float(cfg.trainer.lr))
    loss_name = "cross_entropy" if data.task == "classification" else "mse"
    loss_fn = F.cross_entropy if loss_name == "cross_entropy" else F.mse_loss
    ex = PipelineExecutor(model, opt, loss_fn, pcfg)
    total = int(cfg.trainer.epochs) * len(data.train)
    if max_samples:
        total = min(total, max_samples)
    every = max(total // points, 1)
    curve = [(0, 0.0, *evaluate(model, data, loss_name))]
    seen, next_eval, epoch, t0 = 0, every, 0, time.time()
    while seen < total:
        for x, y in data.train_batches(epoch):
            res = ex.train_step(x, y)
            seen = res.samples
            if seen >= next_eval or seen >= total:
                curve.append((seen, res.cycles, *evaluate(model, data, loss_name)))
                next_eval += every
            if seen >= total:
                break
        epoch += 1
    ex.drain()
    m = ex.metrics()
    curve.append((seen, m["pipeline/cycles"], *evaluate(model, data, loss_name)))
    tail = curve[-max(3, len(curve) // 5):]  # floor estimate: mean of the last fifth of the curve
    return {"curve": curve, "final_loss": curve[-1][2], "final_acc": curve[-1][3],
            "floor": sum(c[2] for c in tail) / len(tail), "cycles": m["pipeline/cycles"],
            "cycles_per_sample": m["pipeline/cycles_per_sample"], "bubble": m["pipeline/bubble_fraction"],
            "stages": ex.S, "micro_batches": pcfg.micro_batches, "seconds": round(time.time() - t0, 1),
            "staleness_max": [m[f"pipeline/stage{s}/staleness_max"] for s in range(ex.S)]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({k[0] for k in results})
    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 3.8 * len(problems)), squeeze=False)
    colors = {"none": "tab:gray", "sync": "tab:blue", "async": "tab:red"}
    styles = {"sgd": "-", "tt": "--", "digital": ":"}
    for i, prob in enumerate(problems):
        for (p, algo, mode), r in sorted(results.items()):
            if p != prob:
                continue
            c = r["curve"]
            lab = f"{algo} / {mode}"
            col = "black" if algo == "digital" else colors[mode]
            axes[i][0].plot([q[0] for q in c], [q[2] for q in c], styles[algo], color=col, label=lab)
            axes[i][1].plot([q[1] for q in c], [q[2] for q in c], styles[algo], color=col, label=lab)
        for j, xl in enumerate(("samples", "clock cycles")):
            ax = axes[i][j]
            ax.set_yscale("log")
            ax.set_xlabel(xl)
            ax.set_ylabel("test loss")
            ax.set_title(f"{prob}: loss vs {xl}")
            ax.grid(alpha=0.3)
        axes[i][0].legend(fontsize=8, ncol=2)
    fig.suptitle("Pipelined analog training (3 stages, soft-bounds devices): analog SGD (solid), TT (dashed), "
                 "digital SGD without pipeline (dotted)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def loss_at(curve, x_index: int, x: float) -> float:
    """Test loss of the curve at abscissa x (samples: index 0, cycles: index 1), linear interpolation."""
    pts = [(c[x_index], c[2]) for c in curve]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1 and x1 > x0:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1] if x >= pts[-1][0] else pts[0][1]


def summarize(results: dict) -> dict:
    out = {}
    for prob in sorted({k[0] for k in results}):
        for algo in ("sgd", "tt"):
            rs = {m: results.get((prob, algo, m)) for m in MODES}
            if any(r is None for r in rs.values()):
                continue
            # per clock cycle: the loss each schedule has reached when async finished
            budget = rs["async"]["cycles"]
            out[f"{prob}/{algo}"] = {
                "floor": {m: rs[m]["floor"] for m in MODES},
                "final_acc": {m: rs[m]["final_acc"] for m in MODES},
                "cycles_per_sample": {m: rs[m]["cycles_per_sample"] for m in MODES},
                "bubble": {m: rs[m]["bubble"] for m in MODES},
                "speedup_async_vs_none": rs["none"]["cycles"] / rs["async"]["cycles"],
                "speedup_async_vs_sync": rs["sync"]["cycles"] / rs["async"]["cycles"],
                "loss_at_async_budget": {m: loss_at(rs[m]["curve"], 1, budget) for m in MODES},
                "async_over_sync_floor": rs["async"]["floor"] / rs["sync"]["floor"],
                "staleness_max_async": rs["async"]["staleness_max"],
            }
        if f"{prob}/sgd" in out and f"{prob}/tt" in out:
            out[f"{prob}/tt_over_sgd_floor"] = {m: out[f"{prob}/tt"]["floor"][m] / out[f"{prob}/sgd"]["floor"][m]
                                                for m in MODES}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--algos", nargs="+", default=list(ALGOS), choices=list(ALGOS))
    ap.add_argument("--quick", action="store_true", help="2000 samples per run")
    ap.add_argument("--samples", type=int, default=12000, help="samples per run (default 12000)")
    ap.add_argument("--points", type=int, default=40, help="evaluations per run")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "pipeline_figure.png")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    max_samples = 2000 if args.quick else args.samples
    results = {}
    for prob in args.problems:
        for algo in args.algos:
            for mode in (("none",) if algo == "digital" else MODES):
                r = run_one(prob, algo, mode, max_samples, args.points)
                results[(prob, algo, mode)] = r
                print(f"{prob:9s} {algo:4s} {mode:5s}  final test loss {r['final_loss']:.4g}  floor {r['floor']:.4g}"
                      f"  acc {r['final_acc']:.3f}  cycles/sample {r['cycles_per_sample']:.1f}  bubble "
                      f"{r['bubble']:.2f}  stale max {r['staleness_max']}  ({r['seconds']} s)", flush=True)
    plot(results, args.out)
    summ = summarize(results)
    print(json.dumps(summ, indent=1, default=lambda v: round(v, 4) if isinstance(v, float) else v))
    print(f"figure: {args.out}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summ, "runs": {"/".join(k): v for k, v in results.items()}},
                                        indent=1))
    bad = [k for k, r in results.items() if not math.isfinite(r["final_loss"])]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
