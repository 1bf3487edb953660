"""The MLflow UI shows a sweep: ``mlflow server`` on 127.0.0.1 against the store of the real CLI sweep
(``test_report_sweep.cli_sweep``: parent + 8 children + the report logged to the parent).

* REST API: experiments/search, runs/search (parent and children, params, tags, metrics), artifacts
  list and get-artifact (the report's files on the parent, the runs' own artifacts on a child).
* Headless Chromium (Debian ``chromium``; skipped when absent) renders the single-page app and dumps the
  DOM: the experiment's runs page shows the experiment, the parent run and the run count (child runs
  are collapsed under their parent there, and the page ignores URL search filters, so the children
  are checked on the compare page, which lists every run's name, id and params), and the parent's
  artifacts page shows the ``report`` folder.

The server is started in its own process group and killed in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from test_report_sweep import EXPERIMENT, N_JOBS, cli_sweep  # the session's real CLI sweep

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return cli_sweep(tmp_path_factory)


@pytest.fixture(scope="module")
def server(sweep):
    """``mlflow server --workers 1`` on a free 127.0.0.1 port; yields the base URL."""
    port = _free_port()
    log = open(Path(sweep["root"]) / "mlflow_server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", sweep["uri"], "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=sweep["root"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited: " + Path(log.name).read_text()[-3000:])
            try:
                if _get(base + "/health", timeout=2)[1].strip() == b"OK":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server not ready in 120 s: " + Path(log.name).read_text()[-3000:])
            time.sleep(0.5)
        yield base
    finally:  # the server and its workers share the process group started above
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        log.close()


def _experiment(base: str) -> dict:
    exps = _api(base, "/api/2.0/mlflow/experiments/search?max_results=100")["experiments"]
    return next(e for e in exps if e["name"] == EXPERIMENT)


def _runs(base: str, exp_id: str) -> list[dict]:
    return _api(base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 1000})["runs"]


def _kv(items) -> dict:
    return {d["key"]: d["value"] for d in items or []}


def test_rest_api_lists_parent_children_params_metrics_and_artifacts(sweep, server):
    exp = _experiment(server)
    runs = _runs(server, exp["experiment_id"])
    by_id = {r["info"]["run_id"]: r for r in runs}
    parent = by_id[sweep["parent"]]
    assert _kv(parent["data"]["tags"])["analogtrain.role"] == "sweep-parent"
    assert parent["info"]["status"] == "FINISHED"
    children = [r for r in runs if _kv(r["data"].get("tags")).get("mlflow.parentRunId") == sweep["parent"]]
    assert len(children) == N_JOBS
    for job in sweep["jobs"]:
        r = by_id[job["run_id"]]
        params, tags = _kv(r["data"]["params"]), _kv(r["data"]["tags"])
        metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
        assert r["info"]["status"] == "FINISHED" and r["info"]["run_name"] == job["run_name"]
        assert float(params["device.asymmetry"]) == float(job["asym"]) and params["seed"] == job["seed"]
        assert tags["sweep.device.skew"] == job["skew"] and tags["sweep.device.asymmetry"] == job["asym"]
        assert metrics["test/acc"] == pytest.approx(job["test/acc"])
        assert "train/loss" in metrics and "val/acc" in metrics

    q = urllib.parse.urlencode({"run_id": sweep["parent"], "path": "report"})
    files = {f["path"] for f in _api(server, f"/api/2.0/mlflow/artifacts/list?{q}")["files"]}
    assert {"report/table.md", "report/table.csv", "report/heatmap.png", "report/report.md"} <= files
    q = urllib.parse.urlencode({"run_uuid": sweep["parent"], "path": "report/table.md"})
    status, body = _get(f"{server}/get-artifact?{q}")
    assert status == 200 and body.decode() == (Path(sweep["report_dir"]) / "table.md").read_text()
    child = sweep["jobs"][0]["run_id"]
    q = urllib.parse.urlencode({"run_id": child})
    files = {f["path"] for f in _api(server, f"/api/2.0/mlflow/artifacts/list?{q}")["files"]}
    assert {"config.yaml", "summary.json"} <= files


def _text(html: str) -> str:
    """Visible text of a DOM dump (tags dropped, whitespace collapsed): ``<strong>9</strong> matching
    runs`` -> ``9 matching runs``."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def _dom(url: str, profile: Path) -> str:
    """The DOM after the SPA rendered (virtual time lets its fetches finish)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_chromium_renders_the_experiment_and_its_runs(sweep, server, tmp_path):
    exp = _experiment(server)
    eid = exp["experiment_id"]
    profile = tmp_path / "chromium-profile"  # one profile: the 4 MB app bundle is fetched once

    page = _text(_dom(f"{server}/#/experiments/{eid}/runs", profile))
    assert page.startswith(f"Runs - Experiment {eid} - MLflow"), page[:300]  # the <title>
    assert EXPERIMENT in page
    parent_name = next(r["info"]["run_name"] for r in _runs(server, eid) if r["info"]["run_id"] == sweep["parent"])
    assert parent_name in page
    assert f"{N_JOBS + 1} matching runs" in page  # the parent and its children (collapsed under it)

    ids = [sweep["parent"], *(j["run_id"] for j in sweep["jobs"])]
    q = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([eid])})
    page = _text(_dom(f"{server}/#/compare-runs?{q}", profile))
    assert f"Comparing {N_JOBS + 1} Runs" in page
    for job in sweep["jobs"]:
        assert job["run_id"] in page and job["run_name"] in page
    assert "device.asymmetry" in page and "device.skew" in page

    html = _dom(f"{server}/#/experiments/{eid}/runs/{sweep['parent']}/artifacts", profile)
    assert parent_name in _text(html) and ">report<" in html  # the artifact tree's "report" folder
