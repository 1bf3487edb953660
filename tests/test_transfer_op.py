"""The fused TT-family transfer op ``ops.buffered_transfer``: its torch twin against hand-computed TTv2 /
c-TTv2 buffer arithmetic (aihwkit-semantics §3.3–3.4), and the compiled kernel against the twin."""

from __future__ import annotations

import pytest
import torch

from analogtrain import ops
from analogtrain.devices import device_from_config, sample_device
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED, UpdateSpec
from analogtrain.ops.reference_transfer import buffer_threshold_ref, buffered_transfer_ref

torch.set_num_threads(1)

BL1 = UpdateSpec(desired_bl=1, fixed_bl=True, ublm=False, um=False)  # the TTv2/c-TTv2 transfer_update


def _const(O, I, std=0.0):
    cfg = device_from_config({"name": "constant_step", "dw_min": 0.01, "dw_min_std": std, "dtod": 0.0,
                              "w_max": 1.0, "w_min": -1.0})
    return sample_device(cfg, O, I, 0)


# ------------------------------------------------------------------------- semantics of the twin


def test_ttv2_weight_unit_threshold_hand_computed():
    """TTv2: H += y·|lr_t|, thr = thres_scale·dw_C, n = clamp(trunc(H/thr), ±BL_t), forget → momentum·H."""
    s = _const(4, 3)
    h = torch.zeros(4, 3)
    h[:, 1] = torch.tensor([0.004, -0.009, 0.0, 0.02])
    c = torch.zeros(4, 3)
    y = torch.tensor([0.7, -0.3, 0.5, 1.0])
    n, pulses = buffered_transfer_ref(h, y, 1, lr_scale=0.01, thr=0.01, bl=1, momentum=0.1, forget=True, w=c,
                                      w_p=None, params=s.params, gparams=s.gparams, lr=0.01, dw=s.dw, spec=BL1,
                                      seed=1, offset=0)
    # H before threshold: 0.011, −0.012, 0.005, 0.03 -> n = 1, −1, 0, clamp(3) = 1
    assert n.tolist() == [1.0, -1.0, 0.0, 1.0]
    torch.testing.assert_close(h[:, 1], torch.tensor([0.0011, -0.0012, 0.005, 0.003]))
    # one pulse of sign(n) per non-zero n on C[:, 1] (C ← C − lr·(−n)): ±dw_C exactly (no noise)
    torch.testing.assert_close(c[:, 1], torch.tensor([0.01, -0.01, 0.0, 0.01]))
    assert pulses.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert c[:, [0, 2]].abs().sum() == 0 and h[:, [0, 2]].abs().sum() == 0


def test_cttv2_dimensionless_no_forget_and_chopper():
    """c-TTv2: H dimensionless (thr 1), chopper sign applied to the read, no forget: H −= (1 − m)·n."""
    h_k = torch.tensor([0.5, -0.3, 2.9, 0.0])
    v = torch.tensor([0.02, 0.02, 0.01, -0.05])
    chop = torch.tensor([1.0, -1.0, -1.0, -1.0])
    n, h = buffer_threshold_ref(h_k, v, chop, lr_scale=40.0, thr=1.0, bl=2, momentum=0.3, forget=False)
    # H = 0.5+0.8, −0.3−0.8, 2.9−0.4, 0+2.0 -> 1.3, −1.1, 2.5, 2.0; n = 1, −1, 2, 2
    assert n.tolist() == [1.0, -1.0, 2.0, 2.0]
    torch.testing.assert_close(h, torch.tensor([1.3 - 0.7, -1.1 + 0.7, 2.5 - 1.4, 2.0 - 1.4]))
    # no_buffer: H ignores its past; cap clamps to ±cap·bl afterwards
    n, h = buffer_threshold_ref(h_k, v, chop, 40.0, 1.0, 2, 0.0, forget=False, no_buffer=True, cap=0.25)
    assert n.tolist() == [0.0, 0.0, 0.0, 2.0]
    torch.testing.assert_close(h, torch.tensor([0.5, -0.5, -0.4, 0.0]))


def test_rows_transfer_and_multi_pulse_write():
    """Rows (transfer_columns False) write C[k, :]; BL_t = 3 without UM writes up to min(|n|, sqrt(3)·…)."""
    s = _const(3, 5)
    h = torch.zeros(3, 5)
    c = torch.zeros(3, 5)
    v = torch.tensor([3.5, -2.2, 0.4, 0.0, 1.0])
    n, pulses = buffered_transfer_ref(h, v, 2, lr_scale=1.0, thr=1.0, bl=1, momentum=0.0, forget=True, w=c,
                                      w_p=None, params=s.params, gparams=s.gparams, lr=0.01, dw=s.dw, spec=BL1,
                                      seed=1, offset=0, columns=False)
    assert n.tolist() == [1.0, -1.0, 0.0, 0.0, 1.0]
    torch.testing.assert_close(c[2], torch.tensor([0.01, -0.01, 0.0, 0.0, 0.01]))
    assert c[[0, 1]].abs().sum() == 0


# ------------------------------------------------------------------------------ compiled vs twin


@pytest.fixture(scope="module")
def kernel():
    from analogtrain.ops import build

    try:
        build.build_cpu()
    except build.BuildError as e:  # pragma: no cover
        pytest.skip(f"compiled kernel unavailable: {e}")
    return torch.ops.analogtrain


def _run(backend, dev_cfg, O, I, columns, spec, reads=6, chop=False, forget=True, no_buffer=False, cap=0.0,
         momentum=0.2, lr_scale=30.0, thr=1.0, bl=1):
    s = sample_device(device_from_config(dev_cfg), O, I, 4)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(O, I, generator=g) * 0.5
    c = torch.zeros(O, I)
    cp = torch.zeros(O, I) if s.write_noise else None
    L, S = (O, I) if columns else (I, O)
    ns, ps = [], []
    for r in range(reads):
        v = torch.randn(L, generator=g) * 0.03
        ch = torch.where(torch.rand(L, generator=g) < 0.5, -1.0, 1.0) if chop else None
        n, p = ops.buffered_transfer(h, v, r % S, lr_scale=lr_scale, thr=thr, bl=bl, momentum=momentum,
                                     forget=forget, w=c, w_p=cp, params=s.params, gparams=s.gparams,
                                     lr=1.0 * s.dw, dw=s.dw, spec=spec, seed=77, offset=r, chop=ch,
                                     columns=columns, no_buffer=no_buffer, cap=cap, backend=backend)
        ns.append(n)
        ps.append(p)
    return torch.stack(ns), torch.stack(ps), h, c, cp


CASES = {
    "cttv2_columns": dict(dev_cfg={"name": "softbounds"}, columns=True, spec=BL1, chop=True),
    "rows_no_forget": dict(dev_cfg={"name": "softbounds"}, columns=False, spec=BL1, forget=False, momentum=0.3),
    "ttv2_weight_units": dict(dev_cfg={"name": "powstep"}, columns=True, spec=BL1, lr_scale=0.01, thr=0.0005),
    "bl3_um_writes": dict(dev_cfg={"name": "expstep"}, columns=True, bl=3,
                          spec=UpdateSpec(desired_bl=3, ublm=True)),
    "agad_cap_no_buffer": dict(dev_cfg={"name": "softbounds"}, columns=True, spec=BL1, forget=False, cap=0.5,
                               chop=True),
    "no_buffer": dict(dev_cfg={"name": "linear_step"}, columns=True, spec=BL1, no_buffer=True),
    "write_noise_device": dict(dev_cfg={"name": "reram_sb"}, columns=True, spec=BL1, chop=True),
    "mean_count_mode": dict(dev_cfg={"name": "softbounds"}, columns=True, spec=UpdateSpec(
        desired_bl=1, ublm=False, um=False, mode=MODE_MEAN_COUNT)),
    "expected_mode": dict(dev_cfg={"name": "softbounds"}, columns=False, spec=UpdateSpec(
        desired_bl=1, ublm=False, um=False, mode=MODE_EXPECTED)),
}


@pytest.mark.compiled
@pytest.mark.parametrize("case", sorted(CASES))
def test_transfer_kernel_matches_twin(kernel, case):
    kw = dict(CASES[case])
    kw["spec"] = UpdateSpec(**{**kw["spec"].__dict__})
    ref = _run("reference", O=14, I=9, **kw)
    got = _run("compiled", O=14, I=9, **kw)
    assert torch.equal(ref[0], got[0])  # n per read
    assert torch.equal(ref[1], got[1])  # pulses written per read
    torch.testing.assert_close(got[2], ref[2], rtol=0, atol=0)  # H bit-identical
    torch.testing.assert_close(got[3], ref[3], rtol=0, atol=1e-6)  # C
    if ref[4] is not None:
        torch.testing.assert_close(got[4], ref[4], rtol=0, atol=1e-6)
    if kw["spec"].mode == MODE_PULSED:
        assert ref[1].sum() > 0  # the case really wrote pulses


@pytest.mark.compiled
def test_transfer_write_equals_pulsed_update_of_one_hot(kernel):
    """The fused write is exactly ``pulsed_update(x = e_k, d = −n)`` with C's counter: unfused == fused."""
    s = sample_device(device_from_config({"name": "softbounds"}), 6, 4, 1)
    h1 = torch.tensor([[1.7], [-0.4], [2.2], [-3.1], [0.2], [1.0]]).repeat(1, 4)
    h2 = h1.clone()
    c1, c2 = torch.zeros(6, 4), torch.zeros(6, 4)
    v = torch.zeros(6)
    n, _ = ops.buffered_transfer(h1, v, 2, lr_scale=1.0, thr=1.0, bl=1, momentum=0.0, forget=True, w=c1, w_p=None,
                                 params=s.params, gparams=s.gparams, lr=s.dw, dw=s.dw, spec=BL1, seed=5, offset=3,
                                 backend="compiled")
    e = torch.zeros(1, 4)
    e[0, 2] = 1
    ops.pulsed_update(c2, None, s.params, s.gparams, e, -n[None], s.dw, s.dw, BL1, 5, 3, backend="compiled")
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)
    assert n.tolist() == [1.0, 0.0, 1.0, -1.0, 0.0, 1.0]
    h2[:, 2] = torch.where(n != 0, 0.0 * h2[:, 2], h2[:, 2])
    torch.testing.assert_close(h1, h2)


@pytest.mark.compiled
@pytest.mark.parametrize("op", ["buffered_transfer", "buffered_transfer_seq"])
@pytest.mark.parametrize("bad", ["params_shape", "w_p_shape", "dw", "w_shape"])
def test_transfer_ops_reject_bad_tile_tensors(kernel, op, bad):
    """Both compiled transfer ops check C's tensors before touching memory: a params block of another tile,
    a w_p of another shape, dw <= 0 and an H/w mismatch each raise an error naming the op and the argument
    (the kernel would otherwise read out of bounds or divide by dw; an unknown mode stops in ``_spec_args``)."""
    O, I = 5, 4
    s = sample_device(device_from_config({"name": "softbounds"}), O, I, 1)
    h, w = torch.zeros(O, I), torch.zeros(O, I)
    w_p, params, dw, spec = None, s.params, s.dw, BL1
    if bad == "params_shape":
        params = sample_device(device_from_config({"name": "softbounds"}), O, I + 1, 1).params
    elif bad == "w_p_shape":
        w_p = torch.zeros(O, I + 2)
    elif bad == "dw":
        dw = 0.0
    elif bad == "w_shape":
        w = torch.zeros(O + 1, I)
    msg = {"params_shape": "params must be", "w_p_shape": "w_p and w shapes differ", "dw": "dw must be > 0",
           "w_shape": "H and w shapes differ"}[bad]
    kw = dict(thr=1.0, bl=1, momentum=0.0, forget=True, w=w, w_p=w_p, params=params, gparams=s.gparams, lr=s.dw,
              dw=dw, spec=spec, seed=1, backend="compiled")
    with pytest.raises(RuntimeError, match=f"analogtrain::{op}: {msg}"):
        if op == "buffered_transfer":
            ops.buffered_transfer(h, torch.ones(O), 1, lr_scale=1.0, offset=0, **kw)
        else:
            ops.buffered_transfer_seq(h, torch.ones(2, O), torch.tensor([1, 2]), chop=None,
                                      lr_scales=torch.ones(2, dtype=torch.float64),
                                      writes=torch.ones(2, dtype=torch.bool), offsets=torch.tensor([0, 1]), **kw)
    assert h.abs().sum() == 0 and w.abs().sum() == 0  # nothing written before the check


def test_twin_matches_the_algorithms_unfused_buffer_arithmetic():
    """Switching the TT family from its torch transfer (``algorithms.ttv2.buffer_step``) to the fused op
    changes nothing: same n and H for forget / no forget, chopped and weight-unit thresholds."""
    ttv2 = pytest.importorskip("analogtrain.algorithms.ttv2")
    g = torch.Generator().manual_seed(3)
    for forget, momentum, thr, scale in [(True, 0.1, 0.002, 0.01), (False, 0.3, 1.0, 37.5), (False, 0.0, 1.0, 3.0)]:
        h_k = torch.randn(50, generator=g)
        v = torch.randn(50, generator=g) * 0.05
        c = torch.where(torch.rand(50, generator=g) < 0.5, -1.0, 1.0)
        n_ref, h_ref = buffer_threshold_ref(h_k, v, c, scale, thr, 2, momentum, forget)
        n_alg, h_alg = ttv2.buffer_step(h_k + (c * v) * scale, thr, 2, momentum, forget)
        assert torch.equal(n_ref, n_alg) and torch.equal(h_ref, h_alg)
