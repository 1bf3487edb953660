"""TT family: hand-computed arithmetic of the transfer machinery (aihwkit-semantics §3, §9 table).

Setup of the arithmetic tests: noise-free ``constant_step`` devices (every pulse moves exactly
``dw_min``), perfect transfer reads, and zero gradients (d = 0 gives no pulses on A), so A stays where
``set_weights`` put it and every number below can be computed by hand.
"""

from __future__ import annotations

import io

import pytest
import torch

from analogtrain.algorithms.agad import AGAD
from analogtrain.algorithms.cttv2 import ChoppedTTv2, buffer_granularity, chopper_period
from analogtrain.algorithms.theory import build_rule
from analogtrain.algorithms.ttv2 import buffer_step
from analogtrain.config.errors import ConfigError

torch.set_num_threads(1)

PERFECT = {"is_perfect": True}


def cstep(dw=0.1, **kw):
    """Noise-free constant-step device: every pulse is exactly ±dw (bounds ±1)."""
    d = {"name": "constant_step", "dw_min": dw, "dw_min_dtod": 0.0, "dw_min_std": 0.0, "up_down": 0.0,
         "up_down_dtod": 0.0, "w_max": 1.0, "w_min": -1.0, "w_max_dtod": 0.0, "w_min_dtod": 0.0}
    d.update(kw)
    return d


def hold(rule, n_samples: int, lr: float, batch: int = 1):
    """Feed ``n_samples`` zero-gradient samples (no pulses on A, transfers still scheduled)."""
    for _ in range(n_samples // batch):
        rule.update(torch.ones(batch, rule.in_size), torch.zeros(batch, rule.out_size), lr)


# --------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("every,units,expected", [(2.0, True, [2, 4, 6, 8]), (1.5, True, [2, 4, 5, 7]),
                                                   (4.0, False, [2, 3, 4, 6])])
def test_tt_schedule_batches(every, units, expected):
    """aihwkit 1.2.0 (§9): m = 3, transfer_every 2 → batches 2,4,6,8; 1.5 → 2,4,5,7; 4 samples → 2,3,4,6."""
    r = build_rule("tt", cstep(), 2, 3, algo_kw={"transfer_every": every, "units_in_mbatch": units,
                                                 "transfer_forward": PERFECT})
    got, last = [], 0
    for b in range(1, 9):
        hold(r, 3, 0.1, batch=3)
        if int(r.transfers) > last:
            got.extend([b] * (int(r.transfers) - last))
            last = int(r.transfers)
    assert got[:4] == expected
    assert int(r.slice_idx) == len(got) % 3  # sequential columns from 0


def test_tt_transfer_writes_lr_times_A_and_caps_at_bl():
    """TTv1 write C[:, j] += lr_t·A[:, j] (exact when lr_t·|A|/dw_C is an integer <= 31), capped at 31."""
    dw = 1.0 / 128  # binary-exact numbers: k = lr_t·|A|/dw must come out as an exact integer
    r = build_rule("tt", cstep(dw=dw), 1, 3, algo_kw={"transfer_every": 1, "units_in_mbatch": False,
                                                      "transfer_forward": PERFECT, "transfer_lr": 2.0})
    A = torch.tensor([[10 * dw, -5 * dw, 20 * dw]])
    r.A.set_weights(A)
    hold(r, 3, 0.5)  # lr_t = transfer_lr·lr = 1: 10, 5 and 20 pulses
    torch.testing.assert_close(r.C.w, A, atol=1e-6, rtol=0)
    r.A.set_weights(torch.tensor([[40 * dw, 0.0, 0.0]]))
    hold(r, 1, 0.5)  # 40 pulses wanted, BL 31 allows 31
    assert float(r.C.w[0, 0]) == pytest.approx(41 * dw, abs=1e-6)


def test_tt_row_transfer():
    """transfer_columns=False: rows of A are read through the transpose and written onto rows of C."""
    dw = 1.0 / 128
    r = build_rule("tt", cstep(dw=dw), 2, 3, algo_kw={"transfer_every": 1, "units_in_mbatch": False,
                                                      "transfer_columns": False, "transfer_forward": PERFECT})
    A = torch.tensor([[4 * dw, 0.0, -2 * dw], [0.0, 0.0, 0.0]])
    r.A.set_weights(A)
    hold(r, 1, 1.0)  # row 0 only (largest |x| fires deterministically: 4 pulses)
    assert float(r.C.w[0, 0]) == pytest.approx(4 * dw, abs=1e-6)
    assert float(r.C.w[1].abs().sum()) == 0.0 and int(r.slice_idx) == 1


def test_tt_reset_puts_the_read_column_at_the_device_reset():
    """with_reset_prob 1: after its transfer a read column of A is reset, each device to
    clip(b_reset + reset_std·ξ) (§2.3); the other columns keep their values."""
    O = 400
    r = build_rule("tt", cstep(dw=0.01, reset=0.05, reset_std=0.02), O, 3,
                   algo_kw={"transfer_every": 1, "units_in_mbatch": False, "transfer_forward": PERFECT,
                            "with_reset_prob": 1.0})
    A = torch.full((O, 3), 0.3)
    r.A.set_weights(A)
    hold(r, 1, 0.1)  # one transfer of column 0, then its reset
    col = r.A.w[:, 0].double()
    assert col.mean().item() == pytest.approx(0.05, abs=0.004) and col.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(r.A.w[:, 1:], A[:, 1:])
    assert float(r.C.w[:, 0].abs().min()) > 0  # the column was transferred before the reset
    # probability < 1: a column-wise draw (aihwkit: "with_reset_prob is COL-wise prob (elem device prob
    # is 1)"): after each transfer its column is reset whole or not at all, about half of the columns here
    r2 = build_rule("tt", cstep(dw=0.01, reset=0.05, reset_std=0.02), 50, 40,
                    algo_kw={"transfer_every": 1, "units_in_mbatch": False, "transfer_forward": PERFECT,
                             "with_reset_prob": 0.5})
    r2.A.set_weights(torch.full((50, 40), 0.3))
    hold(r2, 40, 1e-6)  # one transfer per column (a tiny lr: A stays at 0.3 unless reset)
    changed = (r2.A.w != 0.3).double().mean(dim=0)  # per column: the fraction of its devices reset
    assert set(changed.tolist()) <= {0.0, 1.0}  # whole columns
    assert 8 <= int(changed.sum()) <= 32  # Binomial(40, 1/2)
    with pytest.raises(ConfigError, match="algo.with_reset_prob.*transfer_columns"):
        build_rule("tt", cstep(), 2, 2, algo_kw={"with_reset_prob": 0.5, "transfer_columns": False})


def test_tt_fast_lr_rules():
    r = build_rule("tt", cstep(), 1, 1, algo_kw={"fast_lr": 0.5})
    assert r.fast_lr(0.1) == pytest.approx(0.05)  # scaled
    r = build_rule("tt", cstep(), 1, 1, algo_kw={"fast_lr": 0.5, "scale_fast_lr": False})
    assert r.fast_lr(0.1) == pytest.approx(0.5)
    r = build_rule("tt", cstep(), 1, 1, algo_kw={"fast_lr": 0.0})
    assert r.fast_lr(0.1) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------ TTv2


@pytest.mark.parametrize("forget", [True, False])
def test_ttv2_threshold_and_forget_hand_computed(forget):
    """H += y·|lr_t|, thr = thres_scale·dw_C = 0.1, n = clamp(trunc(H/thr), ±1); forget: H ← 0.1·H
    where n ≠ 0, else H −= 0.9·n·thr; one pulse of sign(n) on C per n ≠ 0."""
    r = build_rule("ttv2", cstep(), 2, 1, algo_kw={"transfer_every": 1, "units_in_mbatch": False,
                                                   "transfer_forward": PERFECT, "forget_buffer": forget})
    r.A.set_weights(torch.tensor([[0.25], [-0.04]]))
    if forget:
        H = [[0.025, -0.04], [0.0275, -0.08], [0.02775, -0.012]]
    else:
        H = [[0.16, -0.04], [0.32, -0.08], [0.48, -0.03]]
    C = [[0.1, 0.0], [0.2, 0.0], [0.3, -0.1]]
    for k in range(3):
        hold(r, 1, 1.0)  # lr_t = 1
        torch.testing.assert_close(r.H[:, 0], torch.tensor(H[k]), atol=1e-6, rtol=0)
        torch.testing.assert_close(r.C.w[:, 0], torch.tensor(C[k]), atol=1e-6, rtol=0)
    assert r.metrics()["buffer_fill"] == pytest.approx(float(r.H.abs().mean()) / 0.1, rel=1e-5)


def test_buffer_step_clamps_to_bl():
    n, h = buffer_step(torch.tensor([3.7, -2.2, 0.5]), 1.0, 2, 0.5, False)
    assert n.tolist() == [2.0, -2.0, 0.0]
    torch.testing.assert_close(h, torch.tensor([2.7, -1.2, 0.5]))


# ----------------------------------------------------------------------------------------- c-TTv2


def test_cttv2_lr_scale_and_granularity():
    """bg = buffer_granularity·dw_A·auto_granularity/(n_cols·|transfer_every|) = 0.5·0.1·4/(2·1) = 0.1;
    lr_scale = |transfer_lr·lr|/bg = 0.4·0.5/0.1 = 2 → H = c·v·2 after one read of each column."""
    assert buffer_granularity(0.5, 4.0, 0.1, 2, 1.0) == pytest.approx(0.1)
    assert buffer_granularity(0.0, 0.0, 0.1, 2, 1.0) == pytest.approx(0.1)  # bg <= 0 counts as 1
    r = build_rule("cttv2", cstep(), 2, 2, algo_kw={"in_chop_prob": 0.0, "buffer_granularity": 0.5,
                                                    "auto_granularity": 4.0, "transfer_lr": 0.4,
                                                    "transfer_forward": PERFECT})
    assert r.buffer_scale(0.5) == pytest.approx(2.0)
    A = torch.tensor([[0.3, -0.2], [0.05, 0.45]])
    r.A.set_weights(A)
    hold(r, 2, 0.5)  # one read per sample: columns 0 and 1
    torch.testing.assert_close(r.H, torch.tensor([[0.6, -0.4], [0.1, 0.9]]), atol=1e-6, rtol=0)
    assert float(r.C.w.abs().sum()) == 0.0  # nothing reached the threshold 1
    r.H.zero_()
    A2 = torch.tensor([[0.3, -0.2], [0.05, 0.55]])
    r.A.set_weights(A2)
    hold(r, 2, 0.5)
    torch.testing.assert_close(r.H, torch.tensor([[0.6, -0.4], [0.1, 0.0]]), atol=1e-6, rtol=0)
    assert float(r.C.w[1, 1]) == pytest.approx(0.1)  # 1.1 → one pulse, H forgotten (momentum 0)


def test_cttv2_auto_scale_fast_lr():
    """lr_A = fast_lr·desired_BL·dw_A/(m_x·m_d); EMA per sample with τ = (1 − auto_momentum)/B."""
    r = build_rule("cttv2", cstep(dw=0.01), 2, 2, algo_kw={"auto_scale": True, "fast_lr": 0.5,
                                                           "auto_momentum": 0.9, "transfer_every": 0})
    x = torch.tensor([[2.0, -1.0], [0.5, 4.0]])
    d = torch.tensor([[0.1, 0.3], [-0.2, 0.05]])
    r.update(x, d, 0.1)
    tau = (1 - 0.9) / 2
    mx = (1 - tau) * 2.0 + tau * 4.0  # first sample initialises the EMA
    md = (1 - tau) * 0.3 + tau * 0.2
    assert float(r.m_x) == pytest.approx(mx)
    assert float(r.m_d) == pytest.approx(md)
    assert float(r.lr_a) == pytest.approx(0.5 * 31 * 0.01 / (mx * md))


def test_regular_chopper_period():
    assert chopper_period(0.5) == 2 and chopper_period(1 / 3) == 3 and chopper_period(0.25) == 4
    assert chopper_period(1.0) == 2 and chopper_period(0.0) == 0


@pytest.mark.parametrize("p,N", [(0.5, 2), (1 / 3, 3)])
def test_regular_chopper_sign_pattern(p, N):
    """Regular chopper: a column's H increments have sign +1 for N sweeps, then −1 for N sweeps (§9)."""
    r = build_rule("cttv2", cstep(), 1, 2, algo_kw={"in_chop_prob": p, "in_chop_random": False,
                                                    "transfer_forward": PERFECT, "transfer_lr": 0.01})
    r.A.set_weights(torch.tensor([[0.1, 0.1]]))
    signs = []
    for _ in range(4 * N):
        h0 = float(r.H[0, 0])
        hold(r, 2, 1.0)  # one sweep
        signs.append(1 if float(r.H[0, 0]) > h0 else -1)
    assert signs == ([1] * N + [-1] * N) * 2
    assert int(r.flips) == 8  # two columns, one flip every N sweeps each


def test_chopper_bookkeeping_constant_gradient_moves_c_along_gradient():
    """A constant gradient with choppers flipping (random and regular, in and out) still moves C in the
    direction −lr·d xᵀ: A is stored chopped and the read is multiplied by the chopper signs at read time.

    A is a strongly asymmetric soft-bounds array (bounds ±0.3), so after a flip it relaxes within a few
    samples to the new chopped steady state and c·A has the sign of the gradient for most of a period.
    With the read *not* de-chopped the transferred signal would average to zero (C would not move)."""
    x = torch.tensor([[1.0, -0.5, 0.8]])
    d = torch.tensor([[-0.6, 0.4]])
    direction = torch.sign(-(d.t() @ x))
    fast = {"name": "softbounds", "w_max": 0.3, "w_min": -0.3, "dw_min": 0.01, "dw_min_dtod": 0.0,
            "dw_min_std": 0.0, "up_down_dtod": 0.0, "w_max_dtod": 0.0, "w_min_dtod": 0.0}
    for kw in ({"in_chop_prob": 0.05, "in_chop_random": True, "out_chop_prob": 0.1},
               {"in_chop_prob": 0.05, "in_chop_random": False}):
        r = build_rule("cttv2", cstep(dw=0.01), 2, 3,
                       algo_kw={"fast_lr": 0.5, "transfer_lr": 0.02, "transfer_forward": PERFECT,
                                "fast_device": fast, **kw})
        broken = build_rule("cttv2", cstep(dw=0.01), 2, 3,
                            algo_kw={"fast_lr": 0.5, "transfer_lr": 0.02, "transfer_forward": PERFECT,
                                     "fast_device": fast, **kw})
        broken.read_sign = lambda j: torch.ones(2)  # control: read NOT multiplied by the chopper signs
        for _ in range(600):
            r.update(x, d, 0.1)
            broken.update(x, d, 0.1)
        assert int(r.flips) >= 6, kw
        assert torch.equal(torch.sign(r.C.w), direction), (kw, r.C.w)
        assert float(r.C.w.abs().min()) >= 0.05, (kw, r.C.w)
        progress = float((r.C.w * direction).mean())
        assert float((broken.C.w * direction).mean()) < 0.5 * progress, (kw, broken.C.w)


# ------------------------------------------------------------------------------------------- AGAD


def test_agad_reference_running_mean_and_warmup_hand_computed():
    """N = 2 (in_chop_prob 0.5), β = tail_weightening/N = 0.5, A fixed at 0.3, lr_scale = |lr_t|/dw_A
    = 2/0.1 = 20. Reads (one column = one sweep each):
        r0: P=0, Δ=+0.3, H=6 → n=1, H=0 (forget, momentum 0), warm-up: no write; M=0.15
        r1: Δ=+0.3 → n=1, no write (sweeps 1 <= 2); M=0.225; chopper flips (s = N)
        r2: P←M=0.225, Δ=(0.3−0.225)·(−1)·20=−1.5 → n=−1, sweeps 2 <= 2: no write; M=0.2625
        r3: Δ=−1.5 → n=−1, sweeps 3 > 2: write one down pulse → C = −0.1; M=0.28125; flip
        r4: P←0.28125, Δ=+0.375, H=0.375, n=0; M=0.290625
    """
    r = build_rule("agad", cstep(), 1, 1, algo_kw={"in_chop_prob": 0.5, "tail_weightening": 1.0,
                                                   "transfer_lr": 1.0, "transfer_forward": PERFECT})
    r.A.set_weights(torch.tensor([[0.3]]))
    Ms = [0.15, 0.225, 0.2625, 0.28125, 0.290625]
    Ps = [0.0, 0.0, 0.225, 0.225, 0.28125]
    Hs = [0.0, 0.0, 0.0, 0.0, 0.375]
    Cs = [0.0, 0.0, 0.0, -0.1, -0.1]
    cs = [1.0, -1.0, -1.0, 1.0, 1.0]
    for k in range(5):
        hold(r, 1, 2.0)
        assert float(r.M) == pytest.approx(Ms[k], abs=1e-6), k
        assert float(r.P) == pytest.approx(Ps[k], abs=1e-6), k
        assert float(r.H) == pytest.approx(Hs[k], abs=1e-6), k
        assert float(r.C.w) == pytest.approx(Cs[k], abs=1e-6), k
        assert float(r.c_in[0]) == cs[k], k


# ---------------------------------------------------------------------------------- validation


def _cfg(algo: dict, device=None):
    from omegaconf import OmegaConf

    return OmegaConf.create({"algo": algo, "device": device or cstep(), "tile": {}})


@pytest.mark.parametrize("cls,algo,key", [
    (ChoppedTTv2, {"name": "cttv2", "in_chop_prob": 1.5}, "algo.in_chop_prob"),
    (ChoppedTTv2, {"name": "cttv2", "n_reads_per_transfer": 2}, "algo.n_reads_per_transfer"),
    (ChoppedTTv2, {"name": "cttv2", "bogus": 1}, "algo.bogus"),
    (AGAD, {"name": "agad", "in_chop_prob": 0.0}, "algo.in_chop_prob"),
    (AGAD, {"name": "agad", "transfer_forward": {"out_noise": -1.0}}, "algo.transfer_forward.out_noise"),
])
def test_validate_names_the_key(cls, algo, key):
    with pytest.raises(ConfigError) as e:
        cls.validate(_cfg(algo))
    assert e.value.key == key


def test_validate_device_override_names_key():
    from analogtrain.algorithms.tt import TikiTaka

    with pytest.raises(ConfigError) as e:
        TikiTaka.validate(_cfg({"name": "tt", "fast_device": {"dw_min": -1.0}}))
    assert e.value.key.startswith("algo.fast_device")


def test_a_and_c_use_different_devices():
    r = build_rule("tt", cstep(dw=0.1), 2, 2, algo_kw={"fast_device": {"dw_min": 0.02}})
    assert r.A.dw == pytest.approx(0.02) and r.C.dw == pytest.approx(0.1)


def test_zero_shifted_reference_subtracted_from_reads():
    """subtract_symmetry_point: R = sp(A) + N(μ_r, σ_r); reads return A − R."""
    dev = {"name": "softbounds", "up_down": 0.3, "dw_min": 0.01, "dw_min_std": 0.0}
    r = build_rule("ttv2", dev, 3, 2, algo_kw={"subtract_symmetry_point": True, "reference_mean": 0.05,
                                               "transfer_forward": PERFECT})
    sp = r.A.sampled.symmetry_point()
    assert float(sp.abs().mean()) > 0.05  # up_down shifts the symmetry point
    torch.testing.assert_close(r.A.w, sp.float(), atol=1e-6, rtol=0)  # A starts at its symmetry point
    v = r.read_slices(torch.tensor([1]))
    torch.testing.assert_close(v[0], torch.full((3,), -0.05), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------- checkpoint


@pytest.mark.parametrize("algo,kw", [
    ("tt", {"units_in_mbatch": False, "transfer_every": 2, "random_selection": True, "with_reset_prob": 0.2}),
    ("ttv2", {"units_in_mbatch": False}),
    ("cttv2", {"auto_scale": True, "fast_lr": 0.1, "in_chop_prob": 0.3, "out_chop_prob": 0.2}),
    ("agad", {"fast_lr": 0.1, "in_chop_prob": 0.5, "in_chop_random": True}),
])
def test_state_round_trip(algo, kw):
    """N steps + save/load into a freshly built rule + M steps == N + M steps, bit for bit (noisy reads,
    write noise, random choppers: every RNG offset and counter is a buffer)."""
    dev = {"name": "softbounds", "dw_min": 0.01, "write_noise_std": 1.0}
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(3, 4, generator=g), 0.1 * torch.randn(3, 3, generator=g)) for _ in range(8)]

    def make():
        return build_rule(algo, dev, 3, 4, algo_kw=kw, seed=7)

    ref = make()
    for x, d in data:
        ref.update(x, d, 0.05)
    part = make()
    for x, d in data[:5]:
        part.update(x, d, 0.05)
    buf = io.BytesIO()
    torch.save(part.state_dict(), buf)
    buf.seek(0)
    resumed = build_rule(algo, dev, 3, 4, algo_kw=kw, seed=99)  # other seeds: the checkpoint must win
    resumed.load_state_dict(torch.load(buf))
    for x, d in data[5:]:
        resumed.update(x, d, 0.05)
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert int(ref.transfers) > 0 and float(ref.pulses_c) > 0


@pytest.mark.parametrize("name", ["tt", "ttv2", "cttv2", "agad"])
def test_algorithm_registry_trains_a_layer_and_reports_metrics(name):
    """Through the trainer contract: prepare → AnalogSGD step → per-layer metrics of the TT family."""
    from omegaconf import OmegaConf

    from analogtrain.algorithms import build_algorithm

    cfg = OmegaConf.create({"algo": {"name": name}, "device": {"name": "softbounds", "dw_min": 0.01},
                            "tile": {}, "model": {}})
    algo = build_algorithm(cfg, {"device": 1, "pulse": 2})
    type(algo).validate(cfg)
    model = algo.prepare(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    opt = algo.build_optimizer(model, lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        x = torch.randn(8, 4, generator=g)
        loss = ((model(x) - 1.0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = algo.metrics(model)
    keys = {k.split("/")[-1] for k in m}
    assert {"transfers", "pulses_a", "pulses_c", "c_sp_distance", "a_pulses_per_update"} <= keys
    if name != "tt":
        assert "buffer_fill" in keys
    if name in ("cttv2", "agad"):
        assert "chopper_flips" in keys
    assert max(v for k, v in m.items() if k.endswith("/transfers")) > 0
    assert max(v for k, v in m.items() if k.endswith("/pulses_a")) > 0


CLASS_DEFAULTS = ["algo.auto_scale=false", "algo.auto_granularity=0", "algo.fast_lr=1.0", "algo.in_chop_prob=0.1"]


@pytest.mark.parametrize("overrides", [[], CLASS_DEFAULTS], ids=["conf", "class_defaults"])
def test_cttv2_as_configured_trains_a_conv_net(compose, tmp_path, overrides):
    """`algo=cttv2` learns a LeNet (conv layers: one column read per image patch, ~2000 reads of conv1 per
    step): after two epochs on digits the test accuracy is far above chance. With the class defaults
    (buffer granularity dw_A, absolute fast lr 1) C is written by read noise and the net stays at chance,
    the failure the conf values avoid."""
    from analogtrain.run import train

    cfg = compose(["experiment=digits_lenet", "algo=cttv2", "trainer.epochs=2", "trainer.lr_schedule=none",
                   "logger=none", "trainer.progress=off", *overrides])
    acc = train(cfg, run_dir=tmp_path)["test/acc"]
    if overrides:
        assert acc < 0.2
    else:
        assert acc > 0.45


def test_cttv2_auto_scale_fast_lr_undivided_while_ema_is_zero():
    """§3.4: while m_x or m_d is still 0 the auto-scaled lr is fast_lr·desired_BL·dw_A, not divided
    (and not fast_lr alone); the batched plan (``ops.auto_scale_lrs``) and ``fast_lr`` agree."""
    r = build_rule("cttv2", cstep(dw=0.01), 2, 2, algo_kw={"auto_scale": True, "fast_lr": 0.5,
                                                           "transfer_every": 0})
    assert float(r.m_x) == 0.0 and r.fast_lr(0.1) == pytest.approx(0.5 * 31 * 0.01)
    x = torch.zeros(1, 2)  # max|x| = 0: the EMA of x stays 0, so the sample's lr is the numerator
    d = torch.tensor([[0.1, 0.3]])
    r.update(x, d, 0.1)
    assert float(r.m_x) == 0.0 and float(r.m_d) == pytest.approx(0.3)
    assert float(r.lr_a) == pytest.approx(0.5 * 31 * 0.01)


def test_transfer_period_rounding_as_aihwkit():
    """every: ceil(te·m) of the decimal te (0.07·100 is 7.000000000000001 in binary floats: 7, not 8);
    in vector updates aihwkit's roundf (halves away from zero: 2.5 -> 3), and a te that rounds to 0 is
    refused (it would silently disable the transfers)."""
    def rule(algo, **kw):
        return build_rule(algo, cstep(), 2, 16, algo_kw=kw)
    assert rule("tt", transfer_every=0.07).every(100) == 7
    assert rule("cttv2", transfer_every=0.14, units_in_mbatch=True).every(50) == 7
    assert rule("tt", transfer_every=2.5, units_in_mbatch=False).every(64) == 3
    assert rule("ttv2", transfer_every=3.5, units_in_mbatch=False).every(64) == 4
    # c-TTv2 "auto": round(n_states/n_columns·|te|) = round(200/16) = round(12.5) -> 13
    r = build_rule("cttv2", cstep(dw=0.01, w_max=1.0, w_min=-1.0), 2, 16, algo_kw={"transfer_every": -1.0})
    assert r.every(64) == 13
    with pytest.raises(ConfigError, match="algo.transfer_every.*rounds to 0"):
        rule("tt", transfer_every=0.4, units_in_mbatch=False)


def test_n_reads_per_transfer_reads_each_column_at_most_once():
    """aihwkit MIN(n_reads_per_transfer, in_size): 5 reads of a 3-column tile write each column once."""
    r = build_rule("tt", cstep(), 2, 3, algo_kw={"transfer_every": 1, "units_in_mbatch": False,
                                                "transfer_forward": PERFECT, "n_reads_per_transfer": 5,
                                                "transfer_lr": 1.0, "scale_transfer_lr": False})
    k = r.next_slices(5)
    assert k.tolist() == [0, 1, 2] and int(r.slice_idx) == 0
