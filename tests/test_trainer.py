"""Training loop: learns, bit-reproducible per seed on CPU, lr schedules, max_steps, NaN stop, checkpoint
content, seed streams, and the synthetic test loss equals the distance to the known optimum."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_cfg

from analogtrain.engine.checkpoint import checkpoint_path, load_checkpoint
from analogtrain.engine.trainer import TrainingDiverged, lr_factor
from analogtrain.run import train
from analogtrain.utils.seeding import SEED_STREAMS, derive_seeds

FAST = ["logger=none", "trainer.progress=off", "model.hidden_sizes=[32]", "data.limit_train=400",
        "trainer.epochs=3"]


def run(tmp_path, *overrides, name="run"):
    return train(compose_cfg([*FAST, *overrides]), run_dir=tmp_path / name)


def test_default_digits_mlp_learns(tmp_path):
    s = train(compose_cfg(["logger=none", "trainer.progress=off", "trainer.epochs=4"]), run_dir=tmp_path)
    assert s["status"] == "FINISHED" and s["epoch"] == 4
    assert s["test/acc"] > 0.85 and s["val/acc"] > 0.8  # chance is 0.1
    assert s["train/loss_epoch"] < 0.7
    assert s["global_step"] == 4 * math.ceil(s["progress/samples"] / 4 / 8)  # 8 = digits batch size


def test_same_seed_is_bit_identical_and_other_seed_differs(tmp_path):
    a = run(tmp_path, name="a")
    b = run(tmp_path, name="b")
    c = run(tmp_path, "seed=1", name="c")
    for k in ("train/loss_epoch", "val/loss", "test/loss", "test/acc"):
        assert a[k] == b[k], k
    sa = load_checkpoint(checkpoint_path(tmp_path / "a"))["model"]
    sb = load_checkpoint(checkpoint_path(tmp_path / "b"))["model"]
    sc = load_checkpoint(checkpoint_path(tmp_path / "c"))["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a["test/loss"] != c["test/loss"]


def test_seed_streams_are_distinct_and_stable():
    s0, s0b, s1 = derive_seeds(0), derive_seeds(0), derive_seeds(1)
    assert s0 == s0b and set(s0) == set(SEED_STREAMS)
    assert len(set(s0.values())) == 4 and not set(s0.values()) & set(s1.values())
    assert all(0 <= v < 2**63 for v in s0.values())


def test_lr_schedules():
    assert lr_factor("none", 7, 10, 1, 0.5, 0.1, 0.0) == 1.0
    assert [lr_factor("step", e, 10, 2, 0.5, 0.1, 0.0) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    cos = [lr_factor("cosine", e, 4, 1, 0.5, 0.1, 0.01) for e in range(5)]
    assert cos[0] == 1.0 and cos[4] == pytest.approx(0.1) and cos[2] == pytest.approx((1 + 0.1) / 2)


def test_schedule_reaches_the_optimizer(tmp_path):
    s = run(tmp_path, "trainer.lr_schedule=step", "trainer.lr_step_size=1", "trainer.lr_gamma=0.5",
            "trainer.lr=0.4")
    hist = load_checkpoint(checkpoint_path(tmp_path / "run"))["history"]
    assert [h["lr"] for h in hist] == pytest.approx([0.4, 0.2, 0.1])
    assert s["lr"] == pytest.approx(0.1)


def test_max_steps_stops_mid_epoch(tmp_path):
    s = run(tmp_path, "trainer.max_steps=30", "trainer.epochs=5")
    assert s["global_step"] == 30 and s["epoch"] == 1 and "test/acc" in s  # 400/8 = 50 steps per epoch


def test_nan_loss_stops_with_clear_message(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"train/loss became (nan|inf) at epoch \d+, step \d+ \(lr=5\)"):
        train(compose_cfg(["logger=none", "trainer.progress=off", "experiment=least_squares", "trainer.lr=5"]),
              run_dir=tmp_path)


def test_synthetic_test_loss_is_distance_to_the_teacher(tmp_path):
    """Noise-free test targets + white inputs: test/loss of a linear model ~ ||W - W*||_F^2 / n_out."""
    from analogtrain.data import build_data

    cfg = compose_cfg(["logger=none", "trainer.progress=off", "experiment=least_squares", "trainer.epochs=2",
                       "data.n_test=20000"])
    s = train(cfg, run_dir=tmp_path)
    w = load_checkpoint(checkpoint_path(tmp_path))["model"]["layers.out.weight"].double()
    w_star = build_data(cfg.data, derive_seeds(cfg.seed)["data"]).extra["teacher_weight"]
    dist = float((w - w_star).pow(2).sum()) / cfg.data.n_out
    assert s["test/loss"] == pytest.approx(dist, rel=0.05)
    assert dist < 0.05 * float(w_star.pow(2).sum()) / cfg.data.n_out  # SGD converged towards W*


def test_checkpoint_holds_everything_needed_to_resume(tmp_path):
    run(tmp_path)
    ck = load_checkpoint(checkpoint_path(tmp_path / "run"))
    assert {"model", "optimizer", "epoch", "global_step", "history", "rng", "fingerprint", "finished"} <= set(ck)
    assert ck["epoch"] == 3 and ck["finished"] and len(ck["history"]) == 3
    assert {"python", "numpy", "torch"} <= set(ck["rng"])
    assert "trainer.lr" in ck["fingerprint"] and "trainer.epochs" not in ck["fingerprint"]


PIPE = ["algo=digital", "logger=none", "trainer.progress=off", "model.hidden_sizes=[16,16]", "data.limit_train=160",
        "trainer.pipeline.stages=3"]


def test_sync_pipeline_through_the_trainer_equals_the_plain_loop(tmp_path):
    plain = train(compose_cfg([*PIPE, "trainer.epochs=2"]), run_dir=tmp_path / "plain")
    sync = train(compose_cfg([*PIPE, "trainer.epochs=2", "trainer.pipeline.mode=sync",
                              "trainer.pipeline.micro_batches=4"]), run_dir=tmp_path / "sync")
    assert sync["test/loss"] == pytest.approx(plain["test/loss"], rel=1e-5)
    assert sync["pipeline/cycles"] > 0 and "pipeline/bubble_fraction" in sync


def test_async_pipeline_run_resumes_exactly(tmp_path):
    over = [*PIPE, "trainer.pipeline.mode=async", "trainer.pipeline.micro_batches=2"]
    full = train(compose_cfg([*over, "trainer.epochs=3"]), run_dir=tmp_path / "full")
    train(compose_cfg([*over, "trainer.epochs=1"]), run_dir=tmp_path / "split")
    resumed = train(compose_cfg([*over, "trainer.epochs=3"]), run_dir=tmp_path / "split")
    for k in ("test/loss", "train/loss_epoch", "pipeline/cycles", "global_step"):
        assert resumed[k] == full[k], k
