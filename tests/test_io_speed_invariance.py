"""The fast IO periphery (``tiles/periphery.py``) and the tile/layer read path are bit-for-bit the plain
evaluation of the IO algorithm (aihwkit-semantics §4, module docstring of ``periphery.py``).

``plain_mvm`` below is the straightforward evaluation: every pass gathers its samples, each step is one
out-of-place float32 op in the order of the formula, the bound test is the element-wise
``any(y > ob) or any(y < -ob)`` of every pass, every ×1 is done. Its noise comes from the same Philox
grids (``ops.random_grid``), so only the arithmetic and the control flow are compared. The speed-ups of
``analog_mvm`` (whole-batch first pass, in-place steps, skipped identities, one-reduction bound test,
BM bookkeeping only when a sample clipped) must not change a single bit, for every IO feature, for
zero / NaN / infinite samples, transposed reads, and through ``AnalogTile`` / ``AnalogLinear``
(forward output, input gradient, offsets).
"""

from __future__ import annotations

import pytest
import torch

from analogtrain import ops
from analogtrain.devices import device_from_config
from analogtrain.nn import AnalogLinear
from analogtrain.ops.rng import Stream
from analogtrain.tiles import SGDRule, TileConfig, derive_seed
from analogtrain.tiles.config import IOConfig
from analogtrain.tiles.periphery import analog_mvm, backward_io, forward_io, io_bins, read_io

torch.set_num_threads(1)
F32 = torch.float32


def plain_mvm(W, x, io: IOConfig, *, seed, offset, stream=Stream.FWD_NOISE, bm_stream=Stream.FWD_NOISE_BM,
              transposed=False, noise_management=None, bound_management=None):
    """Straightforward evaluation of one analog MVM (same contract as ``analog_mvm``)."""
    in_dtype = x.dtype
    M = (W.t() if transposed else W).to(F32)
    x = x.to(F32)
    if io.is_perfect:
        return (io.out_scale * (x @ M.t())).to(in_dtype)
    nm = io.noise_management if noise_management is None else noise_management
    bm = io.bound_management if bound_management is None else bound_management
    B, n_out = x.shape[0], M.shape[0]
    if nm == "abs_max":
        alpha = x.abs().amax(dim=1) if x.shape[1] else torch.zeros(B)
        if io.nm_thres > 0:
            alpha = alpha.clamp(max=io.nm_thres)
    elif nm == "max":
        alpha = x.amax(dim=1)
    elif nm == "constant":
        alpha = torch.full((B,), io.nm_thres if io.nm_thres > 0 else 1.0)
    else:
        alpha = torch.ones(B)
    zero = (alpha <= 0) if (nm != "none" and io.inp_noise == 0) else torch.zeros(B, dtype=torch.bool)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    inp_bin, out_bin = io_bins(io)
    ob = float(io.out_bound)

    def grid(normal, n_a, idx, strm, draw):
        return ops.random_grid(seed, offset, strm, n_a, idx, draw, normal=normal)

    def quantise(v, bin_, sto, idx, strm, draw):
        if bin_ <= 0:
            return v
        q = v / bin_
        q = torch.floor(q + grid(False, v.shape[1], idx, strm, draw)) if sto else torch.round(q)
        return q * bin_

    def one_pass(idx, red, rep):
        strm = stream if rep == 0 else bm_stream
        base = 0 if rep == 0 else 16 * (rep - 1)
        s = (1.0 / alpha[idx]) / red
        v = x[idx] * s[:, None]
        v = quantise(v, inp_bin, io.inp_sto_round, idx, strm, base + 4)
        v = v.clamp(-io.inp_bound, io.inp_bound)
        if io.inp_noise > 0:
            v = v + io.inp_noise * grid(True, v.shape[1], idx, strm, base + 2)
        if io.inp_asymmetry != 0:
            v = torch.where(v < 0, v * (1.0 - io.inp_asymmetry), v)
        y = v @ M.t()
        if io.w_noise > 0 and io.w_noise_type != "none":
            if io.w_noise_type == "additive_constant":
                amp = io.w_noise * v.norm(dim=1, keepdim=True)
            else:
                amp = io.w_noise * torch.sqrt((v * v) @ M.abs().t())
            y = y + amp * grid(True, n_out, idx, strm, base + 1)
        if io.out_asymmetry != 0:
            y = torch.where(y < 0, y * (1.0 - io.out_asymmetry), y)
        if io.out_noise > 0:
            y = y + io.out_noise * grid(True, n_out, idx, strm, base + 0)
        y = quantise(y, out_bin, io.out_sto_round, idx, strm, base + 8)
        exceeded = torch.zeros(y.shape[0], dtype=torch.bool)
        if ob > 0:
            exceeded = (y > ob).any(dim=1)
            if io.bm_test_negative_bound:
                exceeded = exceeded | (y < -ob).any(dim=1)
            y = y.clamp(-ob, ob)
        return y, exceeded

    y = torch.zeros(B, n_out)
    red = torch.ones(B)
    idx = torch.nonzero(~zero).flatten()
    rep = 0
    while idx.numel():
        r = red[idx]
        y_idx, exceeded = one_pass(idx, r, rep)
        y[idx] = y_idx * io.out_scale * alpha[idx][:, None] * r[:, None]
        if bm != "iterative":
            break
        max_red_res = io.max_bm_res / inp_bin if inp_bin > 0 else float("inf")
        retry = exceeded & ~((r > io.max_bm_factor) | (r > max_red_res))
        idx = idx[retry]
        red[idx] = red[idx] * 2.0
        rep += 1
    return y.to(in_dtype)


def assert_bits_equal(got: torch.Tensor, ref: torch.Tensor, zero_sign: bool = True):
    """Same dtype, shape and bits (−0 ≠ +0 unless ``zero_sign`` is False); any NaN matches any NaN."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    nan = torch.isnan(ref)
    assert torch.equal(torch.isnan(got), nan)
    g, r = got[~nan], ref[~nan]
    assert torch.equal(g, r)
    if zero_sign:
        assert torch.equal(torch.signbit(g), torch.signbit(r))


IO_CASES = {
    "default": IOConfig(),
    "no_noise": IOConfig(out_noise=0.0),
    "bm_clips": IOConfig(out_bound=0.5),
    "bm_positive_test_only": IOConfig(out_bound=0.5, bm_test_negative_bound=False),
    "bm_factor_limit": IOConfig(out_bound=0.05, max_bm_factor=3.0),
    "bm_res_limit": IOConfig(out_bound=0.05, max_bm_res=0.1),
    "bm_no_dac": IOConfig(out_bound=0.05, inp_res=0.0),
    "bound_not_f32": IOConfig(out_bound=0.3, out_noise=0.0, out_res=0.0),
    "unbounded": IOConfig(out_bound=0.0),
    "sto_rounding": IOConfig(inp_sto_round=True, out_sto_round=True, out_bound=0.8),
    "inp_noise": IOConfig(inp_noise=0.05, out_bound=0.5),
    "w_noise_additive": IOConfig(w_noise=0.02, w_noise_type="additive_constant", out_bound=0.7),
    "w_noise_pcm": IOConfig(w_noise=0.02, w_noise_type="pcm_read", out_bound=0.7),
    "asymmetries": IOConfig(inp_asymmetry=0.2, out_asymmetry=-0.3, out_bound=0.6),
    "out_scale": IOConfig(out_scale=0.3, out_bound=0.5),
    "res_steps": IOConfig(inp_res=126, out_res=510),
    "no_quantisers": IOConfig(inp_res=0.0, out_res=0.0),
    "nm_none": IOConfig(noise_management="none", inp_bound=2.0, out_bound=0.5),
    "nm_max": IOConfig(noise_management="max", out_bound=0.5),
    "nm_constant": IOConfig(noise_management="constant", nm_thres=2.0, out_bound=0.5),
    "nm_thres": IOConfig(nm_thres=0.5, out_bound=0.5),
    "everything": IOConfig(inp_sto_round=True, out_sto_round=True, inp_noise=0.03, w_noise=0.01,
                           w_noise_type="pcm_read", inp_asymmetry=0.1, out_asymmetry=0.1, out_bound=0.4,
                           out_scale=1.3, nm_thres=0.9),
    "perfect": IOConfig(is_perfect=True, out_scale=2.0),
}


def operands(B, I, O, seed, special=True):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(O, I, generator=g) * 0.1
    x = torch.randn(B, I, generator=g) * torch.rand(B, 1, generator=g) * 3
    if special:
        x[1] = 0.0  # NM α = 0: skipped (reads 0) unless there is input noise
        x[3] = -x[3].abs()  # NM 'max' α < 0
    return W, x


@pytest.fixture(params=["compiled", "reference"])
def backend(request):
    if request.param == "compiled" and not ops.compiled_available("cpu"):
        pytest.skip("no compiled kernel")
    old = ops.get_backend()
    ops.set_backend(request.param)
    yield request.param
    ops.set_backend(old)


@pytest.mark.parametrize("name", list(IO_CASES))
def test_periphery_reads_are_bit_identical_to_the_plain_evaluation(name, backend):
    io = IO_CASES[name]
    for special in (False, True):  # whole-batch first pass / gathered pass over the non-zero samples
        W, x = operands(32, 64, 48, seed=len(name), special=special)
        d = operands(32, 48, 1, seed=len(name) + 1, special=special)[1] * 1e-3
        for fn, args, kw in (
            (forward_io, (W, x), {}),
            (backward_io, (W, d), {}),
            (read_io, (W, x), {}),
            (read_io, (W, d), {"transposed": True}),
        ):
            got = fn(*args, io, seed=123, offset=7, **kw)
            plain_kw = {"stream": Stream.FWD_NOISE, "bound_management": None}
            if fn is backward_io:
                plain_kw = {"stream": Stream.BWD_NOISE, "transposed": True, "bound_management": "none"}
            elif fn is read_io:
                plain_kw = {"stream": Stream.READ_NOISE, "noise_management": "none", "bound_management": "none",
                            **kw}
            assert_bits_equal(got, plain_mvm(*args, io, seed=123, offset=7, **plain_kw))


def test_bm_case_really_repeats_and_special_inputs(backend):
    """The bound-management cases above exercise repetitions; NaN / ±inf / −0 samples, float64 and
    non-contiguous operands and an empty batch follow the plain evaluation too."""
    io = IO_CASES["bm_clips"]
    W, x = operands(13, 40, 24, seed=1)
    y1 = forward_io(W, x, io, seed=1, offset=0)
    y_no_bm = analog_mvm(W, x, io, seed=1, offset=0, bound_management="none")
    assert (y1.abs() > y_no_bm.abs() + 1e-6).any()  # some sample was read again with red > 1
    x = x.clone()
    x[5, 3] = float("nan")
    x[6, 0] = float("inf")
    x[7] = -0.0
    x[8, :5] = float("-inf")
    for io in (IO_CASES["bm_clips"], IO_CASES["default"], IO_CASES["nm_none"], IO_CASES["inp_noise"]):
        assert_bits_equal(forward_io(W, x, io, seed=3, offset=1), plain_mvm(W, x, io, seed=3, offset=1))
    W, x = operands(9, 30, 20, seed=2)
    for Wv, xv in ((W.double(), x.double()), (W.t().contiguous().t(), x.t().contiguous().t()),
                   (W[:, 3:20], x[:, 5:22]), (W, x[:0])):
        assert_bits_equal(forward_io(Wv, xv, IOConfig(out_bound=0.5), seed=2, offset=1),
                          plain_mvm(Wv, xv, IOConfig(out_bound=0.5), seed=2, offset=1))


def test_compiled_backend_reads_through_the_fused_ops(backend, monkeypatch):
    """With the compiled CPU kernel a read takes the fused ops (``ops.io_input`` once with the NM scales,
    ``ops.io_output_`` once per pass; a sample with α = 0 sends the input side back to the general path,
    and a bound-management repetition is one more pass); the reference backend never calls them."""
    calls = {"io_input": [], "io_output_": []}
    for name in calls:
        real = getattr(ops, name)

        def spy(*a, _real=real, _name=name, **kw):
            calls[_name].append(kw.get("nm"))
            return _real(*a, **kw)

        monkeypatch.setattr(ops, name, spy)
    W, x = operands(16, 32, 24, seed=5, special=False)
    forward_io(W, x, IO_CASES["default"], seed=1, offset=0)
    fused = backend == "compiled"
    none = {"io_input": [], "io_output_": []}
    assert calls == ({"io_input": ["abs_max"], "io_output_": [None]} if fused else none)
    for v in calls.values():
        v.clear()
    W, x = operands(16, 32, 24, seed=5, special=True)  # x[1] = 0: α = 0
    io = IO_CASES["bm_factor_limit"]
    y = forward_io(W, x, io, seed=1, offset=0)
    assert_bits_equal(y, plain_mvm(W, x, io, seed=1, offset=0))
    if fused:  # the NM attempt, then the general first pass and at least one repetition
        n_out = len(calls["io_output_"])
        assert calls["io_input"][0] == "abs_max" and calls["io_input"][1:] == [None] * n_out
        assert n_out >= 2
    else:
        assert calls == none


def test_fused_input_op_refuses_a_scale_given_with_noise_management():
    """``ops.io_input`` takes its row scales either from NM (1/α) or from ``s``: both at once is a caller
    error that would silently drop ``s``, so the op refuses it, naming the argument."""
    if not ops.compiled_available("cpu"):
        pytest.skip("no compiled kernel")
    kw = dict(bin=1 / 63, sto=False, bound=1.0, noise=0.0, asym=0.0, seed=1, offset=0, stream=0,
              b_idx=torch.arange(2), round_draw=4, noise_draw=2)
    x = torch.rand(2, 5) + 0.1
    v, alpha = ops.io_input(x, None, nm="abs_max", **kw)
    assert torch.equal(alpha, x.amax(dim=1, keepdim=True))
    with pytest.raises(RuntimeError, match="s must be None with noise management"):
        ops.io_input(x, torch.ones(2, 1), nm="abs_max", **kw)


DEV = device_from_config(dict(name="softbounds", dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0,
                              w_max_dtod=0.0, w_min_dtod=0.0))


@pytest.mark.parametrize("layout", ["one_tile", "split", "analog_bias", "perfect_bias", "remapped"])
def test_analog_linear_forward_and_backward_are_the_plain_reads(layout):
    """Through AnalogLinear (module stack, autograd function, tile offsets): the output and dL/dx of
    each step are the plain reads of each tile at its seed and offsets (summed over input blocks)."""
    kw = {"one_tile": {}, "split": dict(max_input_size=20, max_output_size=16),
          "analog_bias": dict(digital_bias=False), "perfect_bias": dict(digital_bias=False, analog_bias_perfect=True),
          "remapped": dict(weight_scaling_omega=0.6, weight_scaling_columnwise=True)}[layout]
    io = IOConfig(out_bound=0.8, out_noise=0.1)
    cfg = TileConfig(forward=io, backward=IOConfig(out_noise=0.1, out_sto_round=True), update_mode="expected", **kw)

    def make(o, i, name, perfect_bias=False):
        return SGDRule(DEV, o, i, cfg, seed_device=derive_seed(0, name), seed_pulse=1, perfect_bias=perfect_bias)

    layer = AnalogLinear(30, 25, bias=True, tile_cfg=cfg, rule_factory=make, io_seed=9)
    W0 = torch.randn(25, 30, generator=torch.Generator().manual_seed(0)) * 0.3
    layer.set_weights(W0, torch.linspace(-0.2, 0.2, 25))
    m = layer.matrices[0]
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        x = torch.rand(6, 30, generator=gen).requires_grad_(True)
        g = torch.randn(6, 25, generator=gen)
        # expected reads, tile by tile, before the layer advances the offsets
        xa = torch.cat([x.detach(), torch.ones(6, 1)], 1) if m.analog_bias else x.detach()
        y_parts: dict[int, list] = {}  # output block -> reads of its tiles, summed in input-block order
        gx_parts: dict[int, list] = {}
        for tile, osl, isl in m._blocks():
            W = tile.rule.effective_weight()
            seed = int(tile.io_seed)
            xin = xa[:, isl]
            d = g[:, osl]
            if tile.remapped:
                d = d * tile.mapping_scales
            yt = plain_mvm(W, xin, cfg.forward, seed=seed, offset=int(tile.fwd_offset))
            gt = plain_mvm(W, d, cfg.backward, seed=seed, offset=int(tile.bwd_offset),
                           stream=Stream.BWD_NOISE, transposed=True, bound_management="none")
            if tile.remapped:
                yt = yt * tile.mapping_scales
            y_parts.setdefault(osl.start, []).append(yt)
            gx_parts.setdefault(isl.start, []).append(gt)
        y_ref = torch.cat([sum(p[1:], p[0]) for _, p in sorted(y_parts.items())], dim=1)
        gx_ref = torch.cat([sum(p[1:], p[0]) for _, p in sorted(gx_parts.items())], dim=1)
        if layer.bias is not None:
            y_ref = y_ref + layer.bias.detach()
        y = layer(x)
        y.backward(g)
        assert_bits_equal(y.detach(), y_ref)
        # (autograd sums the slices' gradients into zero-filled tensors: the sign of a zero may differ)
        assert_bits_equal(x.grad, gx_ref[:, :30], zero_sign=len(m.tiles) == 1)
        for tile in m.tiles:
            tile.apply_update(0.05)  # the weights move between steps
            assert int(tile.fwd_offset) == step + 1 and int(tile.bwd_offset) == step + 1


def test_analog_linear_batched_leading_dims_equal_the_flat_batch():
    """x (N, T, in) is the tile batch of N·T samples: same output as the flat (N·T, in) input."""
    cfg = TileConfig(update_mode="expected")

    def make(o, i, name, perfect_bias=False):
        return SGDRule(DEV, o, i, cfg, seed_device=derive_seed(0, name), seed_pulse=1, perfect_bias=perfect_bias)

    a = AnalogLinear(12, 7, tile_cfg=cfg, rule_factory=make, io_seed=3)
    b = AnalogLinear(12, 7, tile_cfg=cfg, rule_factory=make, io_seed=3)
    W = torch.randn(7, 12, generator=torch.Generator().manual_seed(0)) * 0.3
    a.set_weights(W)
    b.set_weights(W)
    x = torch.randn(3, 4, 12, generator=torch.Generator().manual_seed(1))
    assert_bits_equal(a(x).reshape(12, 7), b(x.reshape(12, 12)))


# ------------------------------------------------------------------ the torch Philox emulation (rng.py)


def _philox_int(c, seed):
    """Philox4x32-10 on Python ints (arbitrary precision: no wrap-around to rely on)."""
    m = 0xFFFFFFFF
    k0, k1 = seed & m, (seed >> 32) & m
    c0, c1, c2, c3 = c
    for r in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & m, p1 & m, ((p0 >> 32) ^ c3 ^ k1) & m, p0 & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c0, c1, c2, c3


def test_philox_tensor_rounds_equal_python_ints_at_the_extremes():
    """The int64 emulation (the 64-bit product wraps modulo 2**64, so products ≥ 2**63 come out
    negative before the masks) gives the exact words, also for counters near 2**32 and 64-bit seeds."""
    from analogtrain.ops import rng

    vals = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 0xD2511F53, 0x12345678]
    cs = torch.cartesian_prod(*[torch.tensor(vals, dtype=torch.int64)] * 4)
    for seed in (0, 2**63 - 1, 2**64 - 1, 0xDEADBEEFCAFEBABE):
        got = torch.stack(rng.philox4x32(*cs.unbind(1), seed=seed), dim=1)
        for row in range(0, cs.shape[0], 97):
            assert tuple(int(v) for v in got[row]) == _philox_int(tuple(int(v) for v in cs[row]), seed)


def test_rng_single_draw_equals_the_per_element_draw_path():
    """uniform/normal with one ``draw`` number (one Philox word / one Box–Muller branch) are the same
    numbers as the general per-element ``draw`` tensor path, and as the Python-int ``uniform_scalar``."""
    from analogtrain.ops import rng, uniform_scalar

    a = torch.arange(0, 700, 7)[None, :]
    b = torch.tensor([0, 5, 2**32 - 1])[:, None]
    for seed, offset, stream in ((0, 0, 1), (2**63 - 1, 2**33 + 5, 16), (123, 7, 19)):
        for draw in (0, 1, 2, 3, 6, 17, torch.tensor(5)):
            full = torch.full((3, 100), int(draw), dtype=torch.int64)
            assert torch.equal(rng.uniform(seed, offset, stream, a, b, draw),
                               rng.uniform(seed, offset, stream, a, b, full))
            assert torch.equal(rng.normal(seed, offset, stream, a, b, draw),
                               rng.normal(seed, offset, stream, a, b, full))
            u = rng.uniform(seed, offset, stream, a, b, draw)
            for i, j in ((0, 0), (1, 37), (2, 99)):
                assert u[i, j].item() == uniform_scalar(seed, offset, stream, int(a[0, j]), int(b[i, 0]), int(draw))
