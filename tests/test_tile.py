"""DeviceArray / SGDRule / AnalogTile: state, update wiring, periphery reads, cache, checkpoints."""

from __future__ import annotations

import pytest
import torch

from analogtrain.config.errors import ConfigError
from analogtrain.devices import device_from_config
from analogtrain.ops import MODE_EXPECTED, MODE_MEAN_COUNT, MODE_PULSED
from analogtrain.tiles import AnalogTile, DeviceArray, SGDRule, TileConfig, UpdateConfig, update_spec
from analogtrain.tiles.config import IOConfig
from analogtrain.tiles.periphery import backward_io, forward_io

torch.set_num_threads(1)


def softbounds(**kw):
    """Soft-bounds device; d2d/c2c variation off unless given."""
    base = dict(name="softbounds", dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0,
                w_max_dtod=0.0, w_min_dtod=0.0)
    base.update(kw)
    return device_from_config(base)


def test_array_buffers_and_set_weights_clip_to_device_bounds():
    arr = DeviceArray(softbounds(w_max_dtod=0.3, w_min_dtod=0.3), 6, 5, seed_device=3, seed_pulse=4)
    names = set(dict(arr.named_buffers()))
    assert {"w", "w_p", "params", "gparams", "seed", "offset", "read_offset"} <= names
    assert arr.offset.dtype == torch.int64 and arr.seed.item() == 4
    W = torch.linspace(-2, 2, 30).reshape(6, 5)
    arr.set_weights(W)
    lo, hi = arr.bounds
    assert torch.equal(arr.get_weights(), torch.minimum(torch.maximum(W, lo), hi))
    # per-element bounds differ (d2d), and the clipped elements sit exactly at them
    assert lo.unique().numel() > 1
    clipped = (W <= lo) | (W >= hi)
    assert arr.frac_at_bounds() == pytest.approx(clipped.float().mean().item())


def test_set_weights_on_a_reference_device_clips_the_visible_weight_to_the_device_bounds():
    """aihwkit §2.7: set_weights (like decay) clips the visible weight against [b_min, b_max] and ignores
    the reference offset, so a programmed state W + ref can sit beyond a bound until a pulse clips it."""
    from analogtrain.devices import params as P

    arr = DeviceArray(device_from_config({"name": "rasch2024_sb"}), 8, 6, seed_device=3, seed_pulse=4)
    bmin, bmax, ref = (arr.params[k] for k in (P.P_BMIN, P.P_BMAX, P.P_REF))
    assert float((ref.abs() > 0.01).float().mean()) > 0.8  # reference offsets on most elements
    W = torch.linspace(-1.5, 1.5, 48).reshape(8, 6)
    arr.set_weights(W)
    state = arr.device_state()
    assert torch.equal(state, torch.minimum(torch.maximum(W, bmin), bmax))
    # the old rule, clipping to the state's own limits b − ref, differs on elements near the bounds
    lo, hi = arr.bounds
    assert not torch.equal(state, torch.minimum(torch.maximum(W, lo), hi))


def test_array_update_moves_along_minus_lr_x_d_and_advances_offset():
    arr = DeviceArray(softbounds(w_max=10.0, w_min=-10.0), 40, 40, seed_device=1, seed_pulse=2)
    spec = update_spec(UpdateConfig())
    B, lr = 20, 0.05
    x = torch.full((B, 40), 0.5)
    d = torch.full((B, 40), 0.2)
    pulses = arr.update(x, d, lr, spec)
    assert arr.offset.item() == 1
    # mean change per element = −lr·Σ_b x·d (steps ≈ dw_min near 0 of a wide soft-bounds device)
    expected = -lr * B * 0.5 * 0.2
    assert arr.w.mean().item() == pytest.approx(expected, rel=0.05)
    assert pulses.sum().item() == pytest.approx(abs(expected) / 0.01 * 1600, rel=0.05)
    # sign: negative x·d gives up pulses
    arr2 = DeviceArray(softbounds(w_max=10.0, w_min=-10.0), 40, 40, seed_device=1, seed_pulse=2)
    arr2.update(-x, d, lr, spec)
    assert arr2.w.mean().item() == pytest.approx(-expected, rel=0.05)


def test_update_spec_mapping_and_errors():
    assert update_spec(UpdateConfig()).mode == MODE_PULSED
    assert update_spec(UpdateConfig(pulse_type="mean_count")).mode == MODE_MEAN_COUNT
    assert update_spec(UpdateConfig(), "expected").mode == MODE_EXPECTED
    assert update_spec(UpdateConfig(pulse_type="none")) is None
    spec = update_spec(UpdateConfig(update_management=False, update_bl_management=True, desired_bl=5))
    assert spec.um and spec.ublm and spec.desired_bl == 5  # UM forced on under UBLM (aihwkit)
    with pytest.raises(ConfigError, match="tile.update.pulse_type"):
        update_spec(UpdateConfig(pulse_type="deterministic_implicit"))
    with pytest.raises(ConfigError, match="tile.update_mode"):
        update_spec(UpdateConfig(), "fast")


def make_tile(O=4, I=6, io_seed=5, **tile_kw):
    cfg = TileConfig(**tile_kw)
    rule = SGDRule(softbounds(), O, I, cfg, seed_device=1, seed_pulse=2)
    rule.set_weights(torch.randn(O, I, generator=torch.Generator().manual_seed(0)) * 0.2)
    return AnalogTile(rule, cfg, io_seed=io_seed)


def test_tile_reads_go_through_periphery_and_cache_exact_d():
    tile = make_tile(forward=IOConfig(out_noise=0.1), backward=IOConfig(out_noise=0.1))
    W = tile.rule.effective_weight().clone()
    x = torch.randn(3, 6, requires_grad=True)
    y = tile(x)
    assert torch.equal(y.detach(), forward_io(W, x.detach(), tile.tile_cfg.forward, seed=5, offset=0))
    g_out = torch.randn(3, 4)
    y.backward(g_out)
    assert torch.equal(x.grad, backward_io(W, g_out, tile.tile_cfg.backward, seed=5, offset=0))
    # the update gets the exact incoming gradient, not the noisy backward output
    (cx, cd), = tile._cache
    assert torch.equal(cx, x.detach()) and torch.equal(cd, g_out)
    assert tile.fwd_offset.item() == 1 and tile.bwd_offset.item() == 1
    # next read draws fresh noise
    y2 = tile(x)
    assert not torch.equal(y2.detach(), y.detach())


def test_first_layer_backward_runs_without_input_grad_and_no_weight_grad():
    tile = make_tile()
    x = torch.randn(5, 6)  # no requires_grad: backward must still cache (x, d) for the update
    tile(x).sum().backward()
    assert tile.has_cache and tile.bwd_offset.item() == 0  # no backward read needed
    assert tile.analog_ctx.grad is None
    assert not tile.rule.array.w.requires_grad
    assert [n for n, p in tile.named_parameters()] == ["analog_ctx"]


def test_apply_update_concatenates_and_lr_zero_drops():
    tile = make_tile(update_mode="expected")
    ref = make_tile(update_mode="expected")
    x1, x2 = torch.randn(2, 6), torch.randn(3, 6)
    tile(x1).sum().backward()
    tile(x2).sum().backward()
    tile.apply_update(0.1)
    assert not tile.has_cache
    ref.rule.update(torch.cat([x1, x2]), torch.ones(5, 4), 0.1)
    assert torch.equal(tile.rule.effective_weight(), ref.rule.effective_weight())
    w = tile.rule.effective_weight().clone()
    tile(x1).sum().backward()
    tile.apply_update(0.0)
    assert not tile.has_cache and torch.equal(tile.rule.effective_weight(), w)


def test_state_dict_round_trip_gives_identical_updates_and_reads():
    a = make_tile(io_seed=5)
    x, d = torch.randn(8, 6), torch.randn(8, 4) * 0.1
    a.rule.update(x, d, 0.1)
    a(x)
    b = AnalogTile(SGDRule(softbounds(dw_min_dtod=0.3), 4, 6, TileConfig(), seed_device=9, seed_pulse=9),
                   TileConfig(), io_seed=77)
    b.load_state_dict(a.state_dict())
    for t in (a, b):
        t.rule.update(x, d, 0.1)
    assert torch.equal(a.rule.array.w, b.rule.array.w)
    assert torch.equal(a(x), b(x))


def test_sgd_rule_metrics():
    rule = SGDRule(softbounds(), 5, 4, TileConfig(), seed_device=1, seed_pulse=2)
    x, d = torch.rand(6, 4), torch.randn(6, 5) * 0.3
    p1 = rule.array.update(x, d, 0.1, rule.spec)  # direct call: not counted
    rule.update(x, d, 0.1)
    rule.update(x, d, 0.1)
    m = rule.metrics()
    assert m["pulses_per_update"] > 0
    assert m["pulses_per_weight_sample"] == pytest.approx(m["pulses_per_update"] / (6 * 20))
    assert abs(m["pulses_per_update"] - p1.sum().item()) < 0.5 * p1.sum().item()
    lo, hi = rule.array.bounds
    rule.set_weights(torch.full((5, 4), 5.0))  # all at b_max
    m2 = rule.metrics()
    assert m2["frac_at_bounds"] == 1.0
    assert m2["w_mean"] == pytest.approx(hi.mean().item()) and m2["w_std"] < 1e-6
    assert m2["pulses_per_update"] == m["pulses_per_update"]  # no new updates: last value repeated


def test_set_weights_draws_write_noise_around_the_persistent_weight():
    """aihwkit §2.3: with write noise, set_weights stores the clipped W as the persistent weight and the
    visible weight is W + write_noise_std·dw_min·ξ (apply_write_noise_on_set); off: exactly W."""
    W = torch.randn(40, 50, generator=torch.Generator().manual_seed(1)) * 0.1
    arr = DeviceArray(softbounds(write_noise_std=5.0), 40, 50, seed_device=3, seed_pulse=4)  # std 0.05
    arr.set_weights(W)
    assert torch.equal(arr.w_p, W)
    noise = arr.w - arr.w_p
    assert noise.std().item() == pytest.approx(0.05, rel=0.06) and abs(noise.mean().item()) < 0.005
    again = DeviceArray(softbounds(write_noise_std=5.0), 40, 50, seed_device=3, seed_pulse=4)
    again.set_weights(W)
    assert torch.equal(again.w, arr.w)  # Philox draws: reproducible per seed
    quiet = DeviceArray(softbounds(write_noise_std=5.0, apply_write_noise_on_set=False), 40, 50, 3, 4)
    quiet.set_weights(W)
    assert torch.equal(quiet.w, W) and torch.equal(quiet.w_p, W)


def test_lifetime_decay_is_applied_once_per_mini_batch():
    """Devices with a lifetime L (e.g. the capacitor preset) decay w ← clip(w·(1 − 1/L)) once per
    mini-batch update, after the pulses (aihwkit post_update_step)."""
    dev = softbounds(lifetime=10.0)  # decay factor 0.9 per mini-batch
    cfg = TileConfig(update_mode="expected")
    rule = SGDRule(dev, 3, 4, cfg, seed_device=1, seed_pulse=2)
    ref = SGDRule(dev, 3, 4, cfg, seed_device=1, seed_pulse=2)
    W = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 0.3
    rule.set_weights(W)
    ref.set_weights(W)
    tile = AnalogTile(rule, cfg, io_seed=5)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    tile(x).sum().backward()
    tile.apply_update(0.05)
    ref.update(x, torch.ones(2, 3), 0.05)  # the same pulses, without the decay
    expected = ref.effective_weight() * 0.9
    assert torch.allclose(tile.rule.effective_weight(), expected, atol=1e-7)
    assert SGDRule(softbounds(), 3, 4, cfg, seed_device=1, seed_pulse=2).array.sampled.decay_scale is None


# --- weight remapping (tile.weight_scaling_omega, aihwkit MappingParameter) ------------------------------
PERFECT = IOConfig(is_perfect=True)


def remap_tile(W, omega=0.0, columnwise=False, update_mode="pulsed", io=None, **dev_kw):
    """A tile programmed with W through ``AnalogTile.set_weights`` (wide device, no write noise)."""
    kw = {} if io is None else dict(forward=io, backward=io)
    cfg = TileConfig(update_mode=update_mode, weight_scaling_omega=omega,
                     weight_scaling_columnwise=columnwise, **kw)
    dev = dict(w_max=1.0, w_min=-1.0)
    dev.update(dev_kw)
    tile = AnalogTile(SGDRule(softbounds(**dev), *W.shape, cfg, seed_device=1, seed_pulse=2), cfg, io_seed=5)
    tile.set_weights(W)
    return tile


def _remap_W(O=5, I=7):
    W = torch.randn(O, I, generator=torch.Generator().manual_seed(3)) * 0.2
    W[2] *= 0.1  # rows of very different scale (columnwise matters)
    return W


def test_weight_remapping_off_is_unchanged():
    W = _remap_W()
    cfg = TileConfig()
    plain = AnalogTile(SGDRule(softbounds(w_max=1.0, w_min=-1.0), 5, 7, cfg, 1, 2), cfg, io_seed=5)
    plain.set_weights(W)
    off = remap_tile(W, omega=0.0, columnwise=True)
    assert not off.remapped and set(off.state_dict()) == set(plain.state_dict())
    x, g = torch.randn(4, 7, requires_grad=True), torch.randn(4, 5)
    x2 = x.detach().clone().requires_grad_(True)
    y1, y2 = plain(x), off(x2)
    assert torch.equal(y1, y2)
    y1.backward(g)
    y2.backward(g)
    assert torch.equal(x.grad, x2.grad) and torch.equal(plain._cache[0][1], off._cache[0][1])
    plain.apply_update(0.1)
    off.apply_update(0.1)
    assert torch.equal(plain.get_weights(), off.get_weights())


@pytest.mark.parametrize("columnwise", [False, True])
def test_weight_remapping_programs_omega_and_reads_the_effective_weight(columnwise):
    W = _remap_W()
    tile = remap_tile(W, omega=0.6, columnwise=columnwise, io=PERFECT)
    dev = tile.rule.effective_weight()
    alpha = tile.mapping_scales
    assert alpha.shape == (5,)
    if columnwise:
        assert torch.allclose(dev.abs().amax(dim=1), torch.full((5,), 0.6), atol=1e-6)
        assert torch.allclose(alpha, W.abs().amax(dim=1) / 0.6)
    else:
        assert dev.abs().max().item() == pytest.approx(0.6, abs=1e-6)
        assert torch.allclose(alpha, torch.full((5,), W.abs().max().item() / 0.6))
    assert torch.allclose(tile.get_weights(), W, atol=1e-6)
    x = torch.randn(3, 7, requires_grad=True)
    y = tile(x)
    assert torch.allclose(y, x.detach() @ W.t(), atol=1e-5)
    d = torch.randn(3, 5)
    y.backward(d)
    assert torch.allclose(x.grad, d @ W, atol=1e-5)  # W_effᵀ d
    (_, cd), = tile._cache
    assert torch.allclose(cd, d / alpha)  # the update sees d / α
    # a zero row/tile gets α = 1
    Z = W.clone()
    Z[1] = 0
    z = remap_tile(Z, omega=0.6, columnwise=True)
    assert z.mapping_scales[1].item() == 1.0 and torch.allclose(z.get_weights(), Z, atol=1e-6)
    assert torch.equal(remap_tile(torch.zeros(5, 7), omega=0.6).mapping_scales, torch.ones(5))


@pytest.mark.parametrize("omega,columnwise", [(0.0, False), (0.6, False), (0.6, True)])
def test_weight_remapping_update_takes_the_same_effective_step(omega, columnwise):
    """ΔW_eff = α·ΔW_analog = α·(−lr·(d/α)·xᵀ) = −lr·d·xᵀ (first order; soft bounds far away)."""
    W = _remap_W() * 5.0  # α ≈ 2.7 (tile) / 0.15..2.7 (rows): a missing 1/α is far off
    tile = remap_tile(W, omega=omega, columnwise=columnwise, update_mode="expected", io=PERFECT,
                      w_max=1000.0, w_min=-1000.0)
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(4))
    d = torch.randn(4, 5, generator=torch.Generator().manual_seed(5)) * 0.1
    lr = 0.01
    w0 = tile.get_weights()
    tile(x.requires_grad_(True)).backward(d)
    tile.apply_update(lr)
    step = tile.get_weights() - w0
    expected = -lr * d.t() @ x.detach()
    # soft-bounds slope |w|/w_max < 0.2 % here; the error is first order in lr like the step
    assert (step - expected).abs().max().item() < 0.01 * expected.abs().max().item()
    if omega > 0:
        assert (tile.mapping_scales - 1).abs().max().item() > 0.5


def test_weight_remapping_state_dict_round_trip_and_validation():
    W = _remap_W()
    a = remap_tile(W, omega=0.6, columnwise=True)
    assert "mapping_scales" in a.state_dict()
    b = remap_tile(torch.zeros(5, 7), omega=0.6, columnwise=True)
    assert torch.equal(b.mapping_scales, torch.ones(5))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.mapping_scales, a.mapping_scales)
    assert torch.equal(b.get_weights(), a.get_weights())
    x = torch.randn(3, 7)
    assert torch.equal(a(x), b(x))
    with pytest.raises(ConfigError, match="tile.weight_scaling_omega"):
        AnalogTile(SGDRule(softbounds(), 2, 3, TileConfig(), 1, 2), TileConfig(weight_scaling_omega=-1.0))


@pytest.mark.parametrize("pulse_type", ["none", "none_with_device"])
def test_pulse_type_none_is_the_floating_point_update(pulse_type):
    """aihwkit §1.3: pulse_type none updates W ← W − lr·DᵀX exactly (no pulses, no device response, no
    bounds); none_with_device then clips to the device bounds. The pulse counters do not move."""
    tile = TileConfig(update=UpdateConfig(pulse_type=pulse_type))
    rule = SGDRule(softbounds(w_max=0.5, w_min=-0.5, w_max_dtod=0.2, w_min_dtod=0.2), 3, 4, tile,
                   seed_device=1, seed_pulse=2)
    W0 = torch.linspace(-0.45, 0.45, 12).reshape(3, 4)
    rule.set_weights(W0)
    W0 = rule.array.get_weights()  # (set_weights clips to this sample's bounds)
    gen = torch.Generator().manual_seed(0)
    x, d = torch.randn(5, 4, generator=gen), torch.randn(5, 3, generator=gen)
    rule.update(x, d, 0.2)
    want = W0 - 0.2 * d.t() @ x
    lo, hi = rule.array.bounds
    assert bool(((want < lo) | (want > hi)).any())  # the step crosses some bound ...
    if pulse_type == "none":  # ... which the bare update ignores
        torch.testing.assert_close(rule.array.w, want, rtol=0, atol=1e-6)
    else:
        clipped = torch.minimum(torch.maximum(want, lo), hi)
        torch.testing.assert_close(rule.array.w, clipped, rtol=0, atol=1e-6)
    assert int(rule.array.offset) == 0 and float(rule.meter.pulses) == 0.0


@pytest.mark.parametrize("key,algo_kw,tile_kw", [
    ("tile.update.pulse_type", {}, {"update": {"pulse_type": "none"}}),
    ("algo.transfer_update.pulse_type", {"transfer_update": {"pulse_type": "none_with_device"}}, {}),
])
def test_transfer_algorithms_refuse_the_floating_point_update(key, algo_kw, tile_kw):
    """A transfer compound has no floating-point update (its A and C move by pulses): a ConfigError
    naming the key, not a rule that silently never learns."""
    from analogtrain.algorithms.theory import build_rule

    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*algo=sgd only"):
        build_rule("cttv2", {"name": "softbounds"}, 2, 3, algo_kw=algo_kw, tile_kw=tile_kw)
