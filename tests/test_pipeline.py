"""Pipeline executor: exact weight versions per schedule, sync == ordinary training, resume mid-stream."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from analogtrain.algorithms import build_algorithm
from analogtrain.nn import convert_to_analog
from analogtrain.pipeline import PipelineExecutor
from analogtrain.pipeline.schedule import AsyncSchedule, async_versions
from analogtrain.tiles import TileConfig, TileRule
from analogtrain.tiles.config import IOConfig

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- schedule order
def ops(sched, s, n):
    return [sched.op(s, k) for k in range(n)]


def test_async_1f1b_order_and_drain():
    sch = AsyncSchedule(3)
    # input stage: S - s = 3 warm-up forwards, then B/U/F triples
    assert ops(sch, 0, 9) == [("F", 0), ("F", 1), ("F", 2), ("B", 0), ("U", 0), ("F", 3), ("B", 1), ("U", 1),
                              ("F", 4)]
    assert ops(sch, 2, 6) == [("F", 0), ("B", 0), ("U", 0), ("F", 1), ("B", 1), ("U", 1)]
    end = AsyncSchedule(3, base=0, end=2)  # drain after 2 micro-batches
    assert ops(end, 0, 8) == [("F", 0), ("F", 1), ("skip", 2), ("B", 0), ("U", 0), ("skip", 3), ("B", 1),
                              ("U", 1)]
    assert end.op(0, 8) == ("skip", 4) and end.op(0, 9) is None  # B(2) is past the end: stage 0 is done


# ----------------------------------------------------------------------------- staleness, digital
def scalar_chain(ws):
    """S stages, each y = w_s·x (nn.Linear(1, 1) without bias), float64."""
    m = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in ws]).double()
    with torch.no_grad():
        for lin, w in zip(m, ws):
            lin.weight.fill_(w)
    return m


def reference(ws, xs, ys, lr, B, fwd_version, bwd_version):
    """Hand simulation of the scalar chain, one micro-batch (one sample) at a time.

    ``hist[s][v]`` is stage s's weight after v updates. Micro-batch t: forward at stage s with
    ``hist[s][fwd_version(s, t)]``; loss (y − target)²/B (mean over the 1-sample micro-batch, weight 1/B);
    backward at stage s: weight gradient d·a_s with the *forward's* input a_s, input gradient
    ``hist[s][bwd_version(s, t)]``·d; then the update ``hist[s][t+1] = hist[s][t] − lr·d·a_s``."""
    S = len(ws)
    hist = [[float(w)] for w in ws]
    for t, (x, y) in enumerate(zip(xs, ys)):
        a = [float(x)]
        for s in range(S):
            a.append(hist[s][fwd_version(s, t)] * a[s])
        d = 2.0 * (a[S] - float(y)) / B
        for s in reversed(range(S)):
            g_w = d * a[s]
            d = hist[s][bwd_version(s, t)] * d
            hist[s].append(hist[s][t] - lr * g_w)
    return [h[-1] for h in hist]


@pytest.mark.parametrize("S", [2, 3])
def test_async_versions_and_weights_match_hand_simulation(S):
    ws, lr, B = [0.9, -0.7, 1.1][:S], 0.05, 2
    g = torch.Generator().manual_seed(1)
    X = torch.randn(12, 1, generator=g, dtype=torch.float64)
    Y = torch.randn(12, 1, generator=g, dtype=torch.float64)
    model = scalar_chain(ws)
    ex = PipelineExecutor(model, torch.optim.SGD(model.parameters(), lr=lr), F.mse_loss,
                          {"mode": "async", "stages": S, "micro_batches": B, "record_events": True})
    for i in range(0, 12, B):
        ex.train_step(X[i:i + B], Y[i:i + B])
    ex.drain()
    # exact versions: the forward of t at stage s saw min(t, S-1-s) fewer updates than its backward
    table = ex.staleness()
    assert len(table) == 12 * S
    for (s, t), (fv, bv) in table.items():
        assert (fv, bv) == (max(0, t - (S - 1 - s)), t)
    assert table[(0, 5)] == (5 - (S - 1), 5) and table[(S - 1, 5)] == (5, 5)
    m = ex.metrics()
    assert m["pipeline/stage0/staleness_max"] == S - 1 and m[f"pipeline/stage{S - 1}/staleness_max"] == 0
    # the weights are those of the hand simulation with stale forwards and current-weight backwards ...
    got = [lin.weight.item() for lin in model]
    stale = reference(ws, X, Y, lr, B, lambda s, t: async_versions(S, s, t)[0], lambda s, t: t)
    assert got == pytest.approx(stale, abs=1e-12)
    # ... and neither of no staleness, nor of weight stashing (backward with the forward's weights)
    fresh = reference(ws, X, Y, lr, B, lambda s, t: t, lambda s, t: t)
    stash = reference(ws, X, Y, lr, B, lambda s, t: async_versions(S, s, t)[0],
                      lambda s, t: async_versions(S, s, t)[0])
    assert max(abs(a - b) for a, b in zip(got, fresh)) > 1e-6
    if S > 2:  # with 2 stages only the input stage is stale, and its input gradient is never used
        assert max(abs(a - b) for a, b in zip(got, stash)) > 1e-6


def test_sync_all_micro_batches_see_one_version():
    model = scalar_chain([0.5, 0.8, -1.2])
    ex = PipelineExecutor(model, torch.optim.SGD(model.parameters(), lr=0.1), F.mse_loss,
                          {"mode": "sync", "stages": 3, "micro_batches": 4, "record_events": True})
    x = torch.randn(8, 1, dtype=torch.float64)
    for k in range(2):
        ex.train_step(x, x)
    for (s, t), (fv, bv) in ex.staleness().items():
        assert fv == bv == t // 4  # mini-batch k = t // 4 sees version k everywhere
    ups = [e for e in ex.events if e.kind == "U"]
    assert [(e.stage, e.n) for e in ups[:3]] == [(2, 8), (1, 8), (0, 8)]  # one update per stage per flush


# ----------------------------------------------------------------------------- staleness, analog
class VersionRule(TileRule):
    """Digital stand-in tile rule: W −= lr·dᵀx per update; logs the version of every weight read."""

    def __init__(self, o, i, cfg):
        super().__init__(o, i, cfg)
        self.register_buffer("W", torch.zeros(o, i))
        self.version, self.reads = 0, []

    def effective_weight(self):
        self.reads.append(self.version)
        return self.W

    def set_weights(self, W):
        self.W.copy_(W)

    def update(self, x, d, lr):
        self.W -= lr * d.t() @ x
        self.version += 1


def three_linear():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(2, 3, bias=False), nn.Tanh(), nn.Linear(3, 3, bias=False), nn.Tanh(),
                         nn.Linear(3, 2, bias=False))


def test_async_analog_tiles_read_the_expected_versions():
    from analogtrain.algorithms.analog import AnalogSGD

    cfg = TileConfig(forward=IOConfig(is_perfect=True), backward=IOConfig(is_perfect=True))
    digital = three_linear()
    analog = convert_to_analog(copy.deepcopy(digital), cfg, lambda o, i, n: VersionRule(o, i, cfg))
    rules = [analog[k].matrices[0].tiles[0].rule for k in (0, 2, 4)]
    for r in rules:
        r.reads.clear()
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    runs = []
    for model, opt in ((analog, AnalogSGD(analog, lr=0.2)), (digital, torch.optim.SGD(digital.parameters(), lr=0.2))):
        ex = PipelineExecutor(model, opt, F.mse_loss, {"mode": "async", "stages": 3, "micro_batches": 4})
        ex.train_step(X, Y)
        ex.drain()
        runs.append(model)
    # hand-derived from the 1F1B orders (see test_async_1f1b_order_and_drain), 4 micro-batches, drained:
    # stage 2: F0 B0 U0 F1 B1 U1 ...        reads F0:0 B0:0 F1:1 B1:1 F2:2 B2:2 F3:3 B3:3
    # stage 1: F0 F1 B0 U0 F2 B1 U1 F3 B2 U2 B3 U3   reads F0:0 F1:0 B0:0 F2:1 B1:1 F3:2 B2:2 B3:3
    # stage 0: forwards only (no input gradient needed): F0:0 F1:0 F2:0 F3:1
    assert rules[2].reads == [0, 0, 1, 1, 2, 2, 3, 3]
    assert rules[1].reads == [0, 0, 0, 1, 1, 2, 2, 3]
    assert rules[0].reads == [0, 0, 0, 1]
    # analog tiles under the schedule do exactly what digital layers do (perfect periphery)
    for k in (0, 2, 4):
        assert torch.allclose(analog[k].weight, digital[k].weight, atol=1e-6)


# ----------------------------------------------------------------------------- sync == none
def algo_cfg(name="sgd", digital_bias=True, perfect=False):
    tc = TileConfig(digital_bias=digital_bias)
    if perfect:
        tc.forward, tc.backward = IOConfig(is_perfect=True), IOConfig(is_perfect=True)
    return OmegaConf.create({"algo": {"name": name}, "device": {"name": "softbounds", "dw_min": 0.01},
                             "tile": OmegaConf.structured(tc), "model": {"name": "mlp"}})


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3))


def build(kind):
    if kind == "digital":
        model = mlp()
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    algo = build_algorithm(algo_cfg("sgd", digital_bias=False, perfect=True), {"device": 1, "pulse": 2})
    model = algo.prepare(mlp())
    return model, algo.build_optimizer(model, lr=0.1)


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)


def plain_training(model, opt, X, Y, B=8):
    losses = []
    for i in range(0, len(X), B):
        loss = F.mse_loss(model(X[i:i + B]), Y[i:i + B])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def piped_training(model, opt, X, Y, cfg, B=8):
    ex = PipelineExecutor(model, opt, F.mse_loss, cfg)
    return [ex.train_step(X[i:i + B], Y[i:i + B]).loss.item() for i in range(0, len(X), B)], ex


def floats(model):
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize("kind", ["digital", "analog"])
def test_sync_pipeline_equals_ordinary_training(kind):
    X, Y = data()
    ref_model, ref_opt = build(kind)
    ref_losses = plain_training(ref_model, ref_opt, X, Y)
    for mode, M in (("none", 1), ("sync", 2), ("sync", 4)):
        model, opt = build(kind)
        losses, ex = piped_training(model, opt, X, Y, {"mode": mode, "stages": 3, "micro_batches": M})
        ref, got = floats(ref_model), floats(model)
        if kind == "analog" or mode == "none":
            # every weight is analog (bias column on the tile): the pulsed update sees the same concatenated
            # (x, d) -> bit-identical weights and device state
            assert losses == ref_losses
            for k in ref:
                assert torch.equal(ref[k], got[k]), (mode, M, k)
        else:
            # digital weight gradients are summed over micro-batches: equal up to float rounding
            assert losses[0] == ref_losses[0]
            for k in ref:
                assert torch.allclose(ref[k], got[k], atol=1e-6, rtol=0), (mode, M, k)
        assert ex.metrics()["pipeline/stage0/staleness_max"] == 0


def test_async_differs_from_sync_but_learns_alike():
    X, Y = data(64)
    out = {}
    for mode in ("sync", "async"):
        model, opt = build("analog")
        losses, _ = piped_training(model, opt, X, Y, {"mode": mode, "stages": 3, "micro_batches": 4})
        out[mode] = (losses, floats(model))
    assert not all(torch.equal(out["sync"][1][k], out["async"][1][k]) for k in out["sync"][1])
    assert out["async"][0][-1] == pytest.approx(out["sync"][0][-1], rel=0.2)


# ----------------------------------------------------------------------------- checkpoint / resume
def analog_noisy(seed_shift=0):
    algo = build_algorithm(algo_cfg("sgd", digital_bias=True, perfect=False), {"device": 1, "pulse": 2})
    model = algo.prepare(mlp())
    return model, algo.build_optimizer(model, lr=0.1)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_resume_mid_stream_is_bit_identical(tmp_path, mode):
    X, Y = data(56, seed=4)
    cfg = {"mode": mode, "stages": 3, "micro_batches": 2}
    m1, o1 = analog_noisy()
    e1 = PipelineExecutor(m1, o1, F.mse_loss, cfg)
    for i in range(0, 24, 8):
        e1.train_step(X[i:i + 8], Y[i:i + 8])
    st = e1.state_dict()
    if mode == "async":  # backwards still owed to stages 0 and 1: real in-flight activations in the state
        assert {(r["s"], r["t"]) for r in st["inflight"]} == {(0, 4), (0, 5), (1, 5)}
        assert any(v is None for r in st["inflight"] for v in r["saved"]) is False  # analog: no param aliases
    torch.save({"model": m1.state_dict(), "opt": o1.state_dict(), "pipe": st}, tmp_path / "ckpt.pt")
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    m2, o2 = analog_noisy()
    m2.load_state_dict(ck["model"])
    o2.load_state_dict(ck["opt"])
    e2 = PipelineExecutor(m2, o2, F.mse_loss, cfg)
    e2.load_state_dict(ck["pipe"])
    for i in range(24, 56, 8):
        r1, r2 = e1.train_step(X[i:i + 8], Y[i:i + 8]), e2.train_step(X[i:i + 8], Y[i:i + 8])
        assert r1.loss.item() == r2.loss.item() and r1.cycles == r2.cycles
        assert torch.equal(r1.output, r2.output)
    e1.drain()
    e2.drain()
    for (k, v), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v, v2), k
    assert e1.metrics() == e2.metrics()


def test_resume_digital_params_keep_current_weight_backward(tmp_path):
    """Digital stages save their weights as parameter views: the state stores them as None and the
    rebuilt graph reads the live parameters, so resume stays exact."""
    X, Y = data(48, seed=5)
    cfg = {"mode": "async", "stages": 3, "micro_batches": 4}
    m1, o1 = build("digital")
    e1 = PipelineExecutor(m1, o1, F.mse_loss, cfg)
    for i in range(0, 16, 8):
        e1.train_step(X[i:i + 8], Y[i:i + 8])
    st = copy.deepcopy(e1.state_dict())
    assert any(v is None for r in st["inflight"] if r["s"] > 0 for v in r["saved"])
    m2, o2 = build("digital")
    m2.load_state_dict(copy.deepcopy(m1.state_dict()))
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))
    e2 = PipelineExecutor(m2, o2, F.mse_loss, cfg)
    e2.load_state_dict(st)
    for i in range(16, 48, 8):
        assert e1.train_step(X[i:i + 8], Y[i:i + 8]).loss.item() == e2.train_step(X[i:i + 8], Y[i:i + 8]).loss.item()
    e1.drain()
    e2.drain()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_resume_refuses_other_layout():
    m1, o1 = build("digital")
    e1 = PipelineExecutor(m1, o1, F.mse_loss, {"mode": "async", "stages": 3})
    m2, o2 = build("digital")
    e2 = PipelineExecutor(m2, o2, F.mse_loss, {"mode": "async", "stages": 2})
    from analogtrain.config.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.pipeline"):
        e2.load_state_dict(e1.state_dict())


# ----------------------------------------------------------------------------- any algorithm learns
@pytest.mark.parametrize("name", ["digital", "sgd", "tt"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_pipelined_algorithms_reduce_the_loss(name, mode):
    g = torch.Generator().manual_seed(7)
    W = torch.randn(3, 6, generator=g) * 0.3
    X = torch.randn(256, 6, generator=g)
    Y = X @ W.t()
    cfg = algo_cfg(name)
    if name == "tt":
        OmegaConf.update(cfg, "algo", {"name": "tt", "transfer_every": 1.0, "units_in_mbatch": True}, merge=True)
    algo = build_algorithm(cfg, {"device": 1, "pulse": 2})
    torch.manual_seed(0)
    model = algo.prepare(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)))
    opt = algo.build_optimizer(model, lr=0.1)
    ex = PipelineExecutor(model, opt, F.mse_loss, {"mode": mode, "stages": 2, "micro_batches": 2})
    with torch.no_grad():
        before = F.mse_loss(model(X), Y).item()
    for _ in range(2):
        for i in range(0, 256, 8):
            ex.train_step(X[i:i + 8], Y[i:i + 8])
    ex.drain()
    with torch.no_grad():
        after = F.mse_loss(model(X), Y).item()
    assert after < 0.7 * before, (before, after)
