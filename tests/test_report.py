"""analogtrain.report on a synthetic MLflow store whose numbers are known in advance.

The store mimics what the runner logs for a multirun (a parent tagged ``analogtrain.role=sweep-parent``
with ``sweep.<key>`` params, children with flattened params, ``choice.*`` tags, ``mlflow.parentRunId``
and a ``test/acc`` history); every expected statistic is computed here from the generating formula, not
read back from MLflow. The real CLI sweep is in ``test_report_sweep.py``.
"""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from analogtrain.report.tags import SweepTagsCallback, read_sweep_definition, sweep_tags, swept_keys, tag_job_run

ALGOS = ("sgd", "tt")
ASYM = (0.1, 0.5)
SKEW = (0.0, 0.2)
SEEDS = (0, 1, 2)
FAILED = ("tt", 0.5, 0.2, 2)  # this run ends FAILED without a final test/acc


def final_acc(algo: str, a: float, s: float, seed: int) -> float:
    """The generating formula of the synthetic sweep's final test accuracy."""
    base = 0.9 if algo == "tt" else 0.8
    return round(base - 0.3 * a * (algo == "sgd") - 0.1 * s + 0.01 * seed, 6)


def first_acc(algo, a, s, seed) -> float:
    """Accuracy logged at epoch 1: higher than the final one for sgd (so max != last there)."""
    return final_acc(algo, a, s, seed) + (0.05 if algo == "sgd" else -0.05)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh sqlite store with two sweep parents (sgd+tt grid, then a later cttv2 sweep) in one
    experiment, and an unrelated run in another experiment."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("synthetic_sweep", artifact_location=(root / "art").as_uri())
    other = c.create_experiment("other", artifact_location=(root / "art_other").as_uri())

    parent = c.create_run(exp, run_name="sweep-grid", tags={"analogtrain.role": "sweep-parent"})
    pid = parent.info.run_id
    for k, v in {"device.asymmetry": "0.1,0.5", "device.skew": "0,0.2", "seed": "0,1,2",
                 "algo": "sgd,tt", "trainer.lr": "0.1", "sweep": "asym_skew"}.items():
        c.log_param(pid, f"sweep.{k}", v)
    runs = {}
    for algo, a, s, seed in itertools.product(ALGOS, ASYM, SKEW, SEEDS):
        r = c.create_run(exp, run_name=f"softbounds-{algo}-mlp-s{seed}",
                         tags={"mlflow.parentRunId": pid, "choice.algo": algo, "choice.device": "softbounds"})
        rid = r.info.run_id
        params = {"algo.name": algo, "device.asymmetry": a, "device.skew": s, "seed": seed, "trainer.lr": 0.1,
                  "seeds.data": seed * 7 + 1}
        c.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        failed = (algo, a, s, seed) == FAILED
        ts = int(time.time() * 1000)
        metrics = [Metric("test/acc", first_acc(algo, a, s, seed), ts, 1)]
        if not failed:
            metrics.append(Metric("test/acc", final_acc(algo, a, s, seed), ts, 2))
        c.log_batch(rid, metrics=metrics)
        c.set_terminated(rid, "FAILED" if failed else "FINISHED")
        runs[(algo, a, s, seed)] = rid
    c.set_terminated(pid, "FINISHED")
    time.sleep(0.01)  # the second parent starts strictly later ("latest sweep")

    parent2 = c.create_run(exp, run_name="sweep-cttv2", tags={"analogtrain.role": "sweep-parent"})
    p2 = parent2.info.run_id
    c.log_param(p2, "sweep.device.asymmetry", "0.1,0.5")
    c.log_param(p2, "sweep.seed", "0,1")
    for a, seed in itertools.product(ASYM, (0, 1)):
        r = c.create_run(exp, run_name=f"softbounds-cttv2-mlp-s{seed}",
                         tags={"mlflow.parentRunId": p2, "choice.algo": "cttv2",
                               "sweep.device.asymmetry": str(a), "sweep.seed": str(seed)})
        c.log_batch(r.info.run_id, params=[Param("algo.name", "cttv2"), Param("device.asymmetry", str(a)),
                                           Param("device.skew", "0.0"), Param("seed", str(seed))],
                    metrics=[Metric("test/acc", 0.95 - 0.01 * seed, int(time.time() * 1000), 1)])
        c.set_terminated(r.info.run_id, "FINISHED")
    c.set_terminated(p2, "FINISHED")

    stray = c.create_run(other, run_name="unrelated")
    c.log_metric(stray.info.run_id, "test/acc", 0.0)
    c.set_terminated(stray.info.run_id, "FINISHED")
    return {"uri": uri, "root": root, "parent": pid, "parent2": p2, "runs": runs, "exp": exp,
            "stray": stray.info.run_id}


def expected_cells(stat: str = "last") -> dict[tuple, list[float]]:
    cells: dict[tuple, list[float]] = {}
    for algo, a, s, seed in itertools.product(ALGOS, ASYM, SKEW, SEEDS):
        if (algo, a, s, seed) == FAILED:
            continue
        last, first = final_acc(algo, a, s, seed), first_acc(algo, a, s, seed)
        val = last if stat == "last" else max(last, first)
        cells.setdefault((algo, a, s), []).append(val)
    return cells


# ------------------------------------------------------------------------------------- swept values


def test_swept_keys_are_the_multi_valued_overrides():
    keys = swept_keys(["algo=cttv2", "device.asymmetry=0,0.5", "seed=range(0,3)", "model.hidden_sizes=[8]",
                       "x=choice(a)", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "sweep=asym_skew"],
                      {"device.skew": "0.0,0.1", "trainer.lr": 0.1})
    assert keys == ["device.skew", "device.asymmetry", "seed"]
    # a single value on the command line replaces the preset's sweep of that key (BasicSweeper order)
    assert swept_keys(["device.skew=0.1"], {"device.skew": "0.0,0.1", "seed": "0,1"}) == ["seed"]


def test_sweep_tags_tag_only_swept_keys_with_the_jobs_values(tmp_path):
    job = ["sweep=asym_skew", "algo=cttv2", "device.asymmetry=0.5", "device.skew=0.1", "seed=2",
           "logger.tracking_uri=sqlite\\:////tmp/x.db", "hydra.launcher.n_jobs=2"]
    assert sweep_tags(job, swept=["device.asymmetry", "device.skew", "seed"]) == {
        "sweep.device.asymmetry": "0.5", "sweep.device.skew": "0.1", "sweep.seed": "2"}
    assert sweep_tags(job) == {}  # not a multirun (no sweep dir, no swept keys given)
    # swept keys from the sweep dir's multirun.yaml (as Hydra's sweeper writes it)
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - sweep=asym_skew\n    - algo=sgd,cttv2\n    - seed=2\n"
        "  sweeper:\n    params:\n      device.asymmetry: 0.25,0.5\n      device.skew: 0.0,0.1\n      seed: 0,1,2\n")
    overrides, params = read_sweep_definition(tmp_path)
    assert overrides == ["sweep=asym_skew", "algo=sgd,cttv2", "seed=2"] and params["seed"] == "0,1,2"
    assert sweep_tags(job, sweep_dir=tmp_path) == {
        "sweep.algo": "cttv2", "sweep.device.asymmetry": "0.5", "sweep.device.skew": "0.1"}
    # no multirun.yaml (sweep dir not shared): every non-Hydra override is tagged, nothing swept is lost
    fallback = sweep_tags(job, sweep_dir=tmp_path / "missing")
    assert fallback["sweep.device.skew"] == "0.1" and fallback["sweep.sweep"] == "asym_skew"
    assert not any(k.startswith("sweep.hydra") for k in fallback)


def test_tag_job_run_tags_the_recorded_run(store, tmp_path):
    from mlflow.tracking import MlflowClient

    rid = store["stray"]  # a run outside the sweep: the tags this test sets must not change the sweep
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "mlflow_run.json").write_text(json.dumps({"tracking_uri": store["uri"], "run_id": rid}))
    got = tag_job_run(tmp_path / "job", ["device.asymmetry=0.1", "device.skew=0.0", "seed=0", "trainer.lr=0.1"],
                      sweep_dir=tmp_path)  # no multirun.yaml: tags every override
    assert got["sweep.device.asymmetry"] == "0.1"
    tags = MlflowClient(tracking_uri=store["uri"]).get_run(rid).data.tags
    assert tags["sweep.device.skew"] == "0.0" and tags["sweep.trainer.lr"] == "0.1"
    assert tag_job_run(tmp_path / "nothing", ["seed=0"], tmp_path) == {}  # job without an MLflow run
    SweepTagsCallback().on_job_end(None)  # outside a Hydra job: logs a warning, never raises


def _numeric(values) -> bool:
    try:
        [float(v) for v in values]
    except ValueError:
        return False
    return True


def test_sweep_presets_compose_register_the_tag_callback_and_validate_every_cell():
    """Each conf/sweep preset of this package: a grid in hydra.sweeper.params, the tag callback, an
    experiment name, and every grid cell (seeds aside) is a valid config for the algorithm it targets."""
    from conftest import compose_cfg

    from analogtrain.config.validate import validate_config

    presets = {"asym_skew": "sgd", "asym_skew_std": "cttv2", "transfer_noise": "cttv2", "algos_asym": None}
    for name, algo in presets.items():
        extra = [f"algo={algo}"] if algo else []
        cfg = compose_cfg([f"sweep={name}", *extra], return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params)
        assert cfg.hydra.callbacks.sweep_tags._target_ == "analogtrain.report.tags.SweepTagsCallback"
        assert cfg.logger.experiment == f"sweep_{name}"
        assert "seed" in swept_keys([], params), name
        grid = {k: str(v).split(",") for k, v in params.items() if k != "seed"}
        assert all(len(v) > 1 for v in grid.values()), (name, grid)
        # every value of a group (the algorithms), the extremes of each numeric axis (composing is slow)
        corners = {k: (v if not _numeric(v) else [v[0], v[-1]]) for k, v in grid.items()}
        for combo in itertools.product(*corners.values()):
            overrides = [f"sweep={name}", *extra, *(f"{k}={v}" for k, v in zip(corners, combo))]
            validate_config(compose_cfg(overrides))


# ------------------------------------------------------------------------------------------ loading


def test_load_sweep_by_parent_groups_by_the_swept_keys(store):
    from analogtrain.report.source import load_sweep

    sweep = load_sweep(store["uri"], parent=store["parent"])
    assert sweep.keys[0] == "algo"
    assert set(sweep.keys) == {"algo", "device.asymmetry", "device.skew", "seed"}  # not trainer.lr, sweep
    df = sweep.runs
    assert len(df) == 24 and set(df["parent_run_id"]) == {store["parent"]}  # not the unrelated run
    assert df["device.asymmetry"].dtype.kind == "f" and set(df["algo"]) == set(ALGOS)
    row = df[df["run_id"] == store["runs"][("tt", 0.5, 0.0, 1)]].iloc[0]
    assert row["test/acc"] == pytest.approx(final_acc("tt", 0.5, 0.0, 1))
    assert df[df["run_id"] == store["runs"][FAILED]].iloc[0]["status"] == "FAILED"


def test_latest_sweep_and_experiment_mode(store):
    from analogtrain.report.source import load_sweep

    latest = load_sweep(store["uri"])
    assert [p.info.run_id for p in latest.parents] == [store["parent2"]]
    assert set(latest.runs["algo"]) == {"cttv2"} and len(latest.runs) == 4
    assert latest.keys == ["algo", "device.asymmetry", "seed"]  # from the parent params and child tags
    both = load_sweep(store["uri"], experiment="synthetic_sweep")
    assert len(both.runs) == 28 and set(both.runs["algo"]) == {"sgd", "tt", "cttv2"}
    assert set(both.keys) == {"algo", "device.asymmetry", "device.skew", "seed"}


# ------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("stat", ["last", "max"])
def test_table_mean_std_over_seeds_matches_the_generating_values(store, stat):
    from analogtrain.report.source import load_sweep
    from analogtrain.report.table import aggregate

    sweep = load_sweep(store["uri"], parent=store["parent"], stat=stat)
    cells = aggregate(sweep.runs, sweep.keys, "test/acc")
    expected = expected_cells(stat)
    assert len(cells) == len(expected) == 8
    for _, row in cells.iterrows():
        vals = expected[(row["algo"], row["device.asymmetry"], row["device.skew"])]
        assert row["n"] == len(vals)
        assert row["mean"] == pytest.approx(statistics.mean(vals), abs=1e-9)
        assert row["std"] == pytest.approx(statistics.stdev(vals), abs=1e-9)  # sample std, ddof 1
        assert row["min"] == pytest.approx(min(vals)) and row["max"] == pytest.approx(max(vals))
        is_failed_cell = (row["algo"], row["device.asymmetry"], row["device.skew"]) == FAILED[:3]
        assert row["n_failed"] == int(is_failed_cell)
        assert row["seeds"] == ("0,1" if is_failed_cell else "0,1,2")


def test_markdown_table_rows(store):
    from analogtrain.report.source import load_sweep
    from analogtrain.report.table import aggregate, fmt_mean_std, to_markdown

    sweep = load_sweep(store["uri"], parent=store["parent"])
    md = to_markdown(aggregate(sweep.runs, sweep.keys, "test/acc"), sweep.keys, "test/acc")
    lines = md.strip().splitlines()
    assert lines[0] == "| algo | device.asymmetry | device.skew | test/acc (mean ± std) | n | failed |"
    vals = expected_cells()[("sgd", 0.5, 0.2)]
    want = f"| sgd | 0.5 | 0.2 | {statistics.mean(vals):.4f} ± {statistics.stdev(vals):.4f} | 3 | 0 |"
    assert want in lines
    assert len(lines) == 2 + 8
    assert fmt_mean_std(0.5, float("nan")) == "0.5000" and fmt_mean_std(float("nan"), 0.1) == "–"


# --------------------------------------------------------------------------------- files, CLI, MLflow


def test_cli_writes_files_and_logs_them_to_the_parent(store, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from analogtrain.report.cli import main

    out = tmp_path / "rep"
    assert main(["--tracking-uri", store["uri"], "--parent", store["parent"], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| algo | device.asymmetry | device.skew |")
    names = {p.name for p in out.iterdir()}
    assert {"runs.csv", "table.csv", "table.md", "report.md", "heatmap.png", "vs_device.asymmetry.png",
            "vs_device.skew.png"} <= names
    import pandas as pd

    table = pd.read_csv(out / "table.csv")
    assert list(table.columns[:4]) == ["algo", "device.asymmetry", "device.skew", "mean"]
    assert set(table["metric"]) == {"test/acc"} and table["n"].sum() == 23
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report_md = (out / "report.md").read_text()
    assert "![heatmap](heatmap.png)" in report_md and "23 finished with the metric, 1 not" in report_md

    client = MlflowClient(tracking_uri=store["uri"])
    logged = {f.path for f in client.list_artifacts(store["parent"], "report")}
    assert {f"report/{n}" for n in names} == logged
    assert client.get_run(store["parent"]).data.tags["analogtrain.report"].startswith("report/report.md")


def test_cli_experiment_mode_logs_to_a_new_report_run(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from analogtrain.report.cli import main

    out = tmp_path / "exp"
    assert main(["--tracking-uri", store["uri"], "--experiment", "synthetic_sweep", "--out", str(out),
                 "--x", "device.skew", "--y", "device.asymmetry"]) == 0
    client = MlflowClient(tracking_uri=store["uri"])
    reports = client.search_runs([store["exp"]], "tags.`analogtrain.role` = 'report'")
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    assert {store["parent"], store["parent2"]} == set(reports[0].data.tags["analogtrain.report.parents"].split(","))
    assert any(f.path == "report/heatmap.png" for f in client.list_artifacts(reports[0].info.run_id, "report"))


def test_choose_axes_prefers_asymmetry_and_skew(store):
    from analogtrain.report.plots import choose_axes, numeric_keys
    from analogtrain.report.source import load_sweep
    from analogtrain.report.table import aggregate

    sweep = load_sweep(store["uri"], parent=store["parent"])
    cells = aggregate(sweep.runs, sweep.keys, "test/acc")
    assert numeric_keys(cells, ["algo", "device.skew", "device.asymmetry"]) == ["device.skew", "device.asymmetry"]
    assert choose_axes(cells, ["algo", "device.skew", "device.asymmetry"]) == ("device.asymmetry", "device.skew")
    assert choose_axes(cells, ["algo", "device.asymmetry", "device.skew"], x="device.skew") == (
        "device.skew", "device.asymmetry")


@pytest.mark.parametrize(("args", "key"), [
    (["--experiment", "nope"], "report.experiment"),
    (["--parent", "0123456789abcdef0123456789abcdef"], "report.parent"),
    (["--metric", "val/nothing"], "report.metric"),
])
def test_cli_bad_input_is_one_line_naming_the_key(store, tmp_path, capsys, args, key):
    from analogtrain.report.cli import main

    assert main(["--tracking-uri", store["uri"], "--no-log", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"analogtrain-report: error: {key}:")


def test_cli_missing_database(tmp_path, capsys):
    from analogtrain.report.cli import main

    assert main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "report.tracking_uri: no MLflow database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()  # the report never creates an empty store
    # a path, not a URI: one line, no traceback
    assert main(["--tracking-uri", str(tmp_path / "plain.db")]) == 2
    assert "report.tracking_uri: '" in capsys.readouterr().err


@pytest.mark.parametrize(("launcher", "target"), [("joblib", "JoblibLauncher"), ("submitit_slurm", "SlurmLauncher"),
                                                  ("submitit_local", "LocalLauncher")])
def test_sweep_preset_runs_on_the_local_and_slurm_launchers(launcher, target):
    """The presets only set the grid: any Hydra launcher plugin takes it (joblib locally, SLURM)."""
    from conftest import compose_cfg

    cfg = compose_cfg(["sweep=asym_skew", "algo=cttv2", f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert swept_keys([], dict(cfg.hydra.sweeper.params)) == ["device.asymmetry", "device.skew", "seed"]
    assert set(cfg.hydra.callbacks) >= {"mlflow_sweep", "sweep_tags"}  # the runner's parent run + our tags


# ------------------------------------------------------------------------ several sweeps, relaunches


def _mini_store(tmp_path, sweeps):
    """A fresh store; ``sweeps``: list of (parent params {key: value}, children [(experiment, params, status,
    run_dir, test/acc)]), the parents in experiment ``mini`` in order."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mini.db'}"
    c = MlflowClient(tracking_uri=uri)
    exps = {}

    def exp(name):
        if name not in exps:
            exps[name] = c.create_experiment(name, artifact_location=(tmp_path / f"art_{name}").as_uri())
        return exps[name]

    parents = []
    for pparams, children in sweeps:
        p = c.create_run(exp("mini"), tags={"analogtrain.role": "sweep-parent"}).info.run_id
        c.log_batch(p, params=[Param(f"sweep.{k}", v) for k, v in pparams.items()])
        for ename, params, status, run_dir, acc in children:
            time.sleep(0.002)  # distinct start times
            r = c.create_run(exp(ename), tags={"mlflow.parentRunId": p, "analogtrain.run_dir": run_dir,
                                               "choice.algo": "sgd", "choice.device": params.pop("device")})
            rid = r.info.run_id
            c.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()],
                        metrics=[Metric("test/acc", acc, int(time.time() * 1000), 1)])
            c.set_terminated(rid, status)
        c.set_terminated(p, "FINISHED")
        parents.append(p)
    return uri, parents


def test_report_of_one_experiment_keeps_sweeps_with_different_fixed_values_apart(tmp_path):
    """Two sweeps into one experiment, device=softbounds then device=powstep on the command line: the
    device is an axis of the report (not two 'seeds' of one cell); a sweep launched twice is noted."""
    from analogtrain.report.source import load_sweep
    from analogtrain.report.table import aggregate

    def kids(dev, acc, tag):
        return [("mini", {"device": dev, "seed": s, "device.asymmetry": 0.5}, "FINISHED", f"/r/{tag}{s}", acc)
                for s in (0, 1)]
    uri, _ = _mini_store(tmp_path, [({"device": "softbounds", "seed": "0,1"}, kids("softbounds", 0.9, "a")),
                                    ({"device": "powstep", "seed": "0,1"}, kids("powstep", 0.5, "b"))])
    sweep = load_sweep(uri, experiment="mini")
    assert "device" in sweep.keys and not sweep.notes
    cells = aggregate(sweep.runs, sweep.keys, "test/acc")
    got = sorted(zip(cells["device"], cells["mean"], cells["n"]))
    assert got == [("powstep", 0.5, 2), ("softbounds", 0.9, 2)]
    # the first sweep again (new run dirs): its (cell, seed) pairs repeat — said, not hidden
    (tmp_path / "again").mkdir()
    twice = [({"device": "softbounds", "seed": "0,1"}, kids("softbounds", 0.9, tag)) for tag in ("a", "c")]
    uri2, _ = _mini_store(tmp_path / "again", twice)
    again = load_sweep(uri2, experiment="mini")
    assert any("2 finished run(s) repeat" in n for n in again.notes)


def test_report_finds_children_in_other_experiments_and_drops_replaced_runs(tmp_path):
    """Jobs that log to their own experiment (experiment=a,b swept) are still the parent's children; a job
    started again in its run dir after a kill (new MLflow run) counts once, with its newest run."""
    from analogtrain.report.source import load_sweep
    from analogtrain.report.table import aggregate

    uri, (p,) = _mini_store(tmp_path, [({"seed": "0,1"}, [
        ("exp_a", {"device": "softbounds", "seed": 0}, "KILLED", "/r/0", 0.1),  # killed in epoch 1 ...
        ("exp_b", {"device": "softbounds", "seed": 1}, "FINISHED", "/r/1", 0.8),
        ("exp_a", {"device": "softbounds", "seed": 0}, "FINISHED", "/r/0", 0.7),  # ... and relaunched
    ])])
    sweep = load_sweep(uri, parent=p)
    assert len(sweep.runs) == 2 and set(sweep.runs["status"]) == {"FINISHED"}
    assert any("1 run(s) left out" in n for n in sweep.notes)
    cells = aggregate(sweep.runs, sweep.keys, "test/acc")
    assert list(cells["n"]) == [2] and list(cells["n_failed"]) == [0]
    assert cells["mean"][0] == pytest.approx(0.75)


@pytest.mark.parametrize(("args", "key"), [
    (["--x", "device.nothing"], "report.x"),
    (["--keys", "device.nothing"], "report.keys"),
    (["--digits", "-1"], "report.digits"),
])
def test_cli_bad_report_options_are_one_line_errors(store, tmp_path, capsys, args, key):
    from analogtrain.report.cli import main

    assert main(["--tracking-uri", store["uri"], "--parent", store["parent"], "--no-log", "--out",
                 str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"analogtrain-report: error: {key}:")
