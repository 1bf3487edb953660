"""A real sweep through the CLI (``analogtrain -m sweep=asym_skew ...`` with the joblib launcher, a 2 x 2
asymmetry x skew grid, 2 seeds, into a fresh sqlite store), then ``scripts/report.py`` on it.

Ground truth is independent of MLflow: each job's own ``.hydra/overrides.yaml`` (its swept values) and
``artifacts/summary.json`` (its final metrics, written by the trainer). ``cli_sweep`` is shared with
``test_mlflow_ui.py`` through the session's base temp dir (the sweep runs once per session).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "sweep_asym_skew"  # set by conf/sweep/asym_skew.yaml
ASYM = ("0.5", "1.0")
SKEW = ("0.0", "0.1")
SEEDS = ("0", "1")
N_JOBS = len(ASYM) * len(SKEW) * len(SEEDS)


def _env() -> dict:
    from conftest import cli_env

    return cli_env(MPLBACKEND="Agg")


def cli_sweep(tmp_path_factory) -> dict:
    """Run the sweep and the report once per session; return paths, the parent run id and the jobs'
    ground truth ``[{"run_id", "asym", "skew", "seed", "test/acc", "overrides"}]``."""
    root = tmp_path_factory.getbasetemp() / "cli_sweep"
    done = root / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sweep_dir = root / "sweep"
    cmd = [sys.executable, "-m", "analogtrain.cli", "-m", "sweep=asym_skew", "algo=sgd", "trainer=quick",
           "trainer.epochs=1", "trainer.max_steps=10", "trainer.checkpoint=false", "model.hidden_sizes=[8]",
           "data.limit_test=100", f"device.asymmetry={','.join(ASYM)}", f"device.skew={','.join(SKEW)}",
           f"seed={','.join(SEEDS)}", f"logger.tracking_uri={uri}", f"hydra.sweep.dir={sweep_dir}",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    res = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    parent = json.loads((sweep_dir / ".mlflow_parent.json").read_text())["run_id"]

    jobs = []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        overrides = [ln[2:].strip() for ln in (job_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
                     if ln.startswith("- ")]
        kv = dict(o.split("=", 1) for o in overrides)
        summary = json.loads((job_dir / "artifacts" / "summary.json").read_text())
        jobs.append({"run_id": summary["mlflow_run_id"], "run_name": summary["run_name"],
                     "asym": kv["device.asymmetry"], "skew": kv["device.skew"], "seed": kv["seed"],
                     "test/acc": summary["test/acc"], "status": summary["status"]})

    report_dir = root / "report"
    rep = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--tracking-uri", uri,
                          "--out", str(report_dir)],  # no --parent: "the latest sweep"
                         cwd=root, env=_env(), capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    info = {"uri": uri, "root": str(root), "sweep_dir": str(sweep_dir), "parent": parent, "jobs": jobs,
            "report_dir": str(report_dir), "report_stdout": rep.stdout}
    done.write_text(json.dumps(info))
    return info


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return cli_sweep(tmp_path_factory)


def expected_cells(jobs) -> dict[tuple[float, float], list[float]]:
    cells: dict[tuple[float, float], list[float]] = {}
    for j in jobs:
        cells.setdefault((float(j["asym"]), float(j["skew"])), []).append(j["test/acc"])
    return cells


def test_every_grid_point_ran_once(sweep):
    got = sorted((j["asym"], j["skew"], j["seed"]) for j in sweep["jobs"])
    want = sorted((a, s, seed) for a in ASYM for s in SKEW for seed in SEEDS)
    assert got == want and all(j["status"] == "FINISHED" for j in sweep["jobs"])


def test_children_carry_swept_values_as_params_and_tags(sweep):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=sweep["uri"])
    parent = client.get_run(sweep["parent"])
    assert parent.data.tags["analogtrain.role"] == "sweep-parent" and parent.info.status == "FINISHED"
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.name == EXPERIMENT
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{sweep['parent']}'")
    by_id = {r.info.run_id: r for r in children}
    assert set(by_id) == {j["run_id"] for j in sweep["jobs"]}
    for j in sweep["jobs"]:
        r = by_id[j["run_id"]]
        # params: the flattened resolved config; tags: the job's override strings (set in joblib workers)
        assert float(r.data.params["device.asymmetry"]) == float(j["asym"])
        assert float(r.data.params["device.skew"]) == float(j["skew"])
        assert r.data.params["seed"] == j["seed"]
        assert r.data.tags["sweep.device.asymmetry"] == j["asym"]
        assert r.data.tags["sweep.device.skew"] == j["skew"]
        assert r.data.tags["sweep.seed"] == j["seed"]
        assert not any(k.startswith("sweep.") and k.split(".", 1)[1] in ("algo", "trainer.epochs", "sweep")
                       for k in r.data.tags), "only swept keys are tagged"
        assert r.data.metrics["test/acc"] == pytest.approx(j["test/acc"])


def test_report_table_matches_the_jobs_own_results(sweep):
    import pandas as pd

    table = pd.read_csv(Path(sweep["report_dir"]) / "table.csv")
    expected = expected_cells(sweep["jobs"])
    assert len(table) == len(expected) == len(ASYM) * len(SKEW)
    assert set(table["algo"]) == {"sgd"} and set(table["metric"]) == {"test/acc"}
    for _, row in table.iterrows():
        vals = expected[(row["device.asymmetry"], row["device.skew"])]
        assert row["n"] == len(SEEDS) and row["n_failed"] == 0
        assert row["mean"] == pytest.approx(statistics.mean(vals), abs=1e-12)
        assert row["std"] == pytest.approx(statistics.stdev(vals), abs=1e-12)
    # the Markdown printed by the command: one row per cell with mean ± std in 4 decimals
    lines = sweep["report_stdout"].strip().splitlines()
    assert lines[0] == "| algo | device.asymmetry | device.skew | test/acc (mean ± std) | n |"
    for (a, s), vals in expected.items():
        row = f"| sgd | {a:g} | {s:g} | {statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f} | 2 |"
        assert row in lines, (row, lines)


def test_report_figures_and_artifacts_on_the_parent(sweep):
    from mlflow.tracking import MlflowClient

    out = Path(sweep["report_dir"])
    for name in ("heatmap.png", "vs_device.asymmetry.png", "vs_device.skew.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    client = MlflowClient(tracking_uri=sweep["uri"])
    logged = {f.path for f in client.list_artifacts(sweep["parent"], "report")}
    assert {"report/table.md", "report/table.csv", "report/runs.csv", "report/heatmap.png",
            "report/report.md"} <= logged
    runs = __import__("pandas").read_csv(out / "runs.csv")
    assert len(runs) == N_JOBS and not runs["test/acc"].isna().any()
    assert not any(math.isnan(v) for v in runs["device.skew"])
