"""``trainer.pipeline`` end to end through ``run.train``: the experiment overlay composes, the trainer
drives the executor, metrics carry the clock, and a resumed pipelined run equals an uninterrupted one."""

from __future__ import annotations

import pytest
from conftest import compose_cfg

from analogtrain.config.errors import ConfigError
from analogtrain.run import train

BASE = ["experiment=pipeline_synthetic", "algo=sgd", "logger=none", "trainer.progress=off", "data.n_train=240",
        "data.n_test=60", "trainer.log_every_n_steps=5"]


def test_overlay_composes_with_the_pipeline_node():
    cfg = compose_cfg(BASE)
    assert cfg.trainer.pipeline.mode == "async" and cfg.trainer.pipeline.stages == 3
    cfg = compose_cfg(BASE + ["trainer.pipeline.stages=[[layers.fc1],[layers.fc2,layers.out]]"])
    assert list(cfg.trainer.pipeline.stages[1]) == ["layers.fc2", "layers.out"]


def test_bad_pipeline_value_is_refused_before_work(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.pipeline\.mode"):
        train(compose_cfg(BASE + ["trainer.pipeline.mode=gpipe"]), run_dir=tmp_path)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_resumed_pipelined_run_equals_uninterrupted(tmp_path, mode):
    over = BASE + [f"trainer.pipeline.mode={mode}"]
    ref = train(compose_cfg(over + ["trainer.epochs=2"]), run_dir=tmp_path / "ref")
    assert ref["pipeline/cycles"] > 0 and ref["pipeline/samples"] == 2 * 240
    stale = ref["pipeline/stage0/staleness_max"]
    assert stale == (2 if mode == "async" else 0) and ref["pipeline/stage2/staleness_max"] == 0
    train(compose_cfg(over + ["trainer.epochs=1"]), run_dir=tmp_path / "r")
    res = train(compose_cfg(over + ["trainer.epochs=2"]), run_dir=tmp_path / "r")  # resumes at epoch 2
    for k in ("test/loss", "train/loss_epoch", "pipeline/cycles", "pipeline/bubble_fraction"):
        assert res[k] == ref[k], k


@pytest.mark.slow
def test_figure_script_quick(tmp_path):
    """``scripts/pipeline_figure.py --quick``: runs, writes the PNG/JSON, and the cycle ordering holds."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out, js = tmp_path / "p.png", tmp_path / "p.json"
    p = subprocess.run([sys.executable, str(root / "scripts" / "pipeline_figure.py"), "--quick", "--problems",
                        "synthetic", "--algos", "sgd", "--points", "5", "--out", str(out), "--json", str(js)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.stat().st_size > 10000
    s = json.loads(js.read_text())["summary"]["synthetic/sgd"]
    cps = s["cycles_per_sample"]
    assert cps["async"] < cps["sync"] < cps["none"]
    assert s["speedup_async_vs_none"] > 2.0
