"""IO periphery (aihwkit-semantics §4): closed form with noise off, noise scaling, BM, perfect mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analogtrain.ops.rng import Stream
from analogtrain.tiles.config import IOConfig
from analogtrain.tiles.periphery import analog_mvm, backward_io, forward_io, io_bins, read_io

torch.set_num_threads(1)
F32 = np.float32


def closed_form(W: np.ndarray, x: np.ndarray, io: IOConfig, bm: bool = True):
    """Independent float32 evaluation of §6.7's formula
    y = α·red·clip(rint(W·clip(rint(x·s/inp_bin)·inp_bin)/out_bin)·out_bin), s = (1/α)/red, with the
    iterative BM loop (red doubles while clipping, up to the limits). Returns (y, red per sample)."""
    inp_bin = F32(io.inp_res) * F32(2.0)
    out_bin = F32(io.out_res) * F32(2.0 * io.out_bound)
    ob = F32(io.out_bound)
    ys, reds = [], []
    for xv in x.astype(F32):
        alpha = F32(np.max(np.abs(xv)))
        red = F32(1.0)
        while True:
            s = (F32(1.0) / alpha) / red
            xq = np.rint((xv * s) / inp_bin) * inp_bin  # np.rint: half to even
            xq = np.clip(xq, F32(-1), F32(1)).astype(F32)
            yq = (np.rint((W.astype(F32) @ xq) / out_bin) * out_bin).astype(F32)
            exceeded = bool(np.any(yq > ob) or np.any(yq < -ob))
            yq = np.clip(yq, -ob, ob)
            if bm and exceeded and not (red > io.max_bm_factor or red > F32(io.max_bm_res) / inp_bin):
                red = red * F32(2)
                continue
            break
        ys.append(yq * alpha * red)
        reds.append(red)
    return np.stack(ys).astype(F32), np.array(reds)


def noise_free(**kw) -> IOConfig:
    return IOConfig(out_noise=0.0, **kw)


def test_bins_are_relative_to_full_range():
    inp_bin, out_bin = io_bins(IOConfig())
    assert inp_bin == pytest.approx(1 / 63, rel=1e-6)
    assert out_bin == pytest.approx(24 / 510, rel=1e-6)
    # resolution > 1 = number of steps over the full range
    assert io_bins(IOConfig(inp_res=126, out_res=510))[0] == pytest.approx(1 / 63, rel=1e-6)
    assert io_bins(IOConfig(inp_res=0, out_bound=0)) == (0.0, 0.0)


def test_forward_equals_closed_form_with_bound_management():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(5, 8, generator=g) * 10.0  # large enough that most samples clip at red = 1
    x = torch.randn(200, 8, generator=g) * torch.rand(200, 1, generator=g) * 5
    io = noise_free()
    y = forward_io(W, x, io, seed=1, offset=0)
    y_ref, red = closed_form(W.numpy(), x.numpy(), io)
    # the test set must exercise BM: red = 1, 2 and 4 all occur
    assert {1.0, 2.0, 4.0} <= set(red.tolist())
    np.testing.assert_array_equal(y.numpy(), y_ref)


def test_bound_management_reaches_16_and_accepts_last_pass():
    # W x = 8·10 = 80 for x = 1 at red = 1: needs red 16 (80/16 = 5 < 12) — and with W = 40 even red = 16
    # still clips; the 5th pass (red = 16) is accepted clipped: y = 12·16·α.
    x = torch.ones(1, 8)
    y, _ = closed_form(np.full((1, 8), 10.0, F32), x.numpy(), noise_free())
    assert forward_io(torch.full((1, 8), 10.0), x, noise_free(), seed=0, offset=0).item() == pytest.approx(
        y.item(), abs=0)
    y_sat = forward_io(torch.full((1, 8), 40.0), x, noise_free(), seed=0, offset=0)
    assert y_sat.item() == pytest.approx(12 * 16, rel=1e-6)


def test_bm_none_clips_and_backward_never_uses_bm():
    W = torch.full((3, 4), 6.0)  # W x = 24 > 12 for x = 1 (forward) and Wᵀ d = 18 > 12 (backward)
    x = torch.ones(2, 4)
    io = noise_free(inp_res=0.0, out_res=0.0)  # no bins: only clipping and BM matter here
    assert torch.allclose(forward_io(W, x, io, seed=0, offset=0), torch.full((2, 3), 24.0))
    io_off = noise_free(bound_management="none", inp_res=0.0, out_res=0.0)
    assert torch.allclose(forward_io(W, x, io_off, seed=0, offset=0), torch.full((2, 3), 12.0))
    d = torch.ones(2, 3) * 0.5  # α = 0.5: normalised output 18 clips at 12 -> 12·0.5 = 6
    g = backward_io(W, d, io, seed=0, offset=0)
    assert torch.allclose(g, torch.full((2, 4), 6.0))
    # the same numbers through the forward path with BM recover the exact 9 = 0.5·18
    assert torch.allclose(forward_io(W.t().contiguous(), d, io, seed=0, offset=0), torch.full((2, 4), 9.0))


def test_backward_is_transposed_read_with_closed_form():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(6, 9, generator=g) * 0.3
    d = torch.randn(50, 6, generator=g) * 1e-3  # tiny gradients: NM rescales them, nothing is lost
    io = noise_free()
    out = backward_io(W, d, io, seed=0, offset=0)
    ref, red = closed_form(W.t().numpy(), d.numpy(), io, bm=False)
    assert (red == 1).all()
    np.testing.assert_array_equal(out.numpy(), ref)
    # the error is bounded by the bins in *normalised* units times α = max|d| of the sample
    inp_bin, out_bin = io_bins(io)
    alpha = d.abs().amax(1, keepdim=True)
    bound = alpha * (out_bin / 2 + W.abs().sum(0, keepdim=True) * inp_bin / 2) + 1e-9
    assert ((out - d @ W).abs() <= bound).all()
    assert (out - d @ W).abs().max() < 1e-4  # tiny gradients are not swamped by the bins


def test_perfect_is_exact():
    g = torch.Generator().manual_seed(5)
    W, x = torch.randn(7, 11, generator=g) * 10, torch.randn(13, 11, generator=g) * 100
    io = IOConfig(is_perfect=True, out_scale=2.0, out_noise=1.0, w_noise=1.0,
                  w_noise_type="additive_constant")
    assert torch.equal(forward_io(W, x, io, seed=0, offset=0), 2.0 * (x @ W.t()))
    assert torch.equal(backward_io(W, x[:, :7], io, seed=0, offset=0), 2.0 * (x[:, :7] @ W))


def test_output_noise_scales_with_max_abs_x_under_nm():
    W = torch.zeros(4, 16)
    io = IOConfig(out_noise=0.1, out_res=0.0)  # no ADC bins so the noise is seen unquantised
    base = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    amax = base.abs().amax(1, keepdim=True)
    for scale in (0.01, 1.0, 20.0):
        y = forward_io(W, base * scale, io, seed=7, offset=0)
        # y = α·σ·ξ with α = max|x| of that sample: normalised residual is a standard normal · σ
        z = y / (amax * scale)
        assert z.std().item() == pytest.approx(0.1, rel=0.03)
        assert z.mean().abs().item() < 0.01
    # without NM the output noise is absolute (std σ whatever the scale)
    y = forward_io(W, base * 20.0, IOConfig(out_noise=0.1, out_res=0.0, noise_management="none",
                                           bound_management="none", inp_bound=1.0), seed=7, offset=0)
    assert y.std().item() == pytest.approx(0.1, rel=0.03)


def test_noise_is_reproducible_per_seed_and_offset():
    W = torch.randn(8, 8, generator=torch.Generator().manual_seed(1)) * 0.2
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(2))
    io = IOConfig(out_noise=0.5, inp_noise=0.05, w_noise=0.02, w_noise_type="pcm_read")
    a = forward_io(W, x, io, seed=11, offset=3)
    assert torch.equal(a, forward_io(W, x, io, seed=11, offset=3))
    assert not torch.equal(a, forward_io(W, x, io, seed=11, offset=4))
    assert not torch.equal(a, forward_io(W, x, io, seed=12, offset=3))
    # a sample's noise does not depend on which other samples are in the call (b = row index)
    assert torch.equal(a[:4], forward_io(W, x, io, seed=11, offset=3)[:4])
    # forward and backward draw from different streams
    assert not torch.equal(analog_mvm(W, x, io, seed=11, offset=3, stream=Stream.BWD_NOISE), a)


def test_weight_noise_additive_constant_std():
    # y_i noise = w_noise·‖x'‖₂·ξ_i in normalised units; x = one-hot·α -> ‖x'‖ = 1 -> std α·w_noise
    io = IOConfig(out_noise=0.0, out_res=0.0, w_noise=0.05, w_noise_type="additive_constant")
    x = torch.zeros(5000, 10)
    x[:, 0] = 3.0
    y = forward_io(torch.zeros(1, 10), x, io, seed=2, offset=0)
    assert y.std().item() == pytest.approx(3.0 * 0.05, rel=0.04)
    io_pcm = IOConfig(out_noise=0.0, out_res=0.0, w_noise=0.05, w_noise_type="pcm_read")
    W = torch.zeros(1, 10)
    W[0, 0] = 0.25  # std = α·w_noise·sqrt(|W|·x'^2) = 3·0.05·0.5 around the mean 3·0.25
    y = forward_io(W, x, io_pcm, seed=2, offset=0)
    assert y.std().item() == pytest.approx(3.0 * 0.05 * 0.5, rel=0.04)
    assert y.mean().item() == pytest.approx(0.75, abs=0.01)


def test_input_noise_and_asymmetries():
    io = noise_free(inp_asymmetry=0.5, out_asymmetry=0.25, out_res=0.0, inp_res=0.0)
    W = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    x = torch.tensor([[-1.0, 0.5]])  # α = 1; x' = (-0.5, 0.5) after input asymmetry
    y = forward_io(W, x, io, seed=0, offset=0)
    # W x' = (-0.5, -0.5); both negative -> ×0.75
    assert torch.allclose(y, torch.tensor([[-0.375, -0.375]]))
    io_n = IOConfig(out_noise=0.0, out_res=0.0, inp_res=0.0, inp_noise=0.1, bound_management="none")
    x = torch.zeros(4000, 3)
    x[:, 0] = 2.0
    y = forward_io(torch.tensor([[0.0, 1.0, 1.0]]), x, io_n, seed=9, offset=0)
    # two noisy inputs summed: std = α·0.1·sqrt(2)
    assert y.std().item() == pytest.approx(2.0 * 0.1 * 2**0.5, rel=0.04)


def test_stochastic_rounding_is_unbiased_and_on_grid():
    io = noise_free(inp_sto_round=True, out_res=0.0, noise_management="none")
    x = torch.full((20000, 1), 0.3 / 63)  # 0.3 of a DAC bin
    y = forward_io(torch.ones(1, 1), x, io, seed=4, offset=0)
    q = (y * 63).round()
    assert torch.allclose(y * 63, q, atol=1e-4)  # every value on the DAC grid (0 or 1 bin)
    assert set(q.unique().tolist()) <= {0.0, 1.0}
    assert q.mean().item() == pytest.approx(0.3, abs=0.015)
    # deterministic rounding gives 0
    assert forward_io(torch.ones(1, 1), x[:5], noise_free(noise_management="none", out_res=0.0), seed=4,
                      offset=0).abs().max() == 0


def test_zero_input_gives_zero_output_under_nm():
    io = IOConfig(out_noise=0.5)
    y = forward_io(torch.ones(3, 4), torch.zeros(2, 4), io, seed=0, offset=0)
    assert torch.equal(y, torch.zeros(2, 3))


def test_nm_variants():
    W = torch.eye(3)
    x = torch.tensor([[0.2, -0.8, 0.4]])
    # max: α = max x = 0.4 -> x/α = (0.5, -2 -> clipped -1, 1) -> y = α·(0.5, -1, 1)
    y = forward_io(W, x, noise_free(noise_management="max", inp_res=0, out_res=0, bound_management="none"),
                   seed=0, offset=0)
    assert torch.allclose(y, torch.tensor([[0.2, -0.4, 0.4]]))
    # constant: α = nm_thres
    y = forward_io(W, x, noise_free(noise_management="constant", nm_thres=0.5, inp_res=0, out_res=0),
                   seed=0, offset=0)
    assert torch.allclose(y, torch.tensor([[0.2, -0.5, 0.4]]))
    # abs_max capped by nm_thres: α = 0.5 -> -0.8/0.5 clipped to -1
    y = forward_io(W, x, noise_free(nm_thres=0.5, inp_res=0, out_res=0, bound_management="none"),
                   seed=0, offset=0)
    assert torch.allclose(y, torch.tensor([[0.2, -0.5, 0.4]]))


def test_transfer_read_has_no_nm_and_no_bm():
    W = torch.tensor([[0.3, 20.0], [-0.05, 1.0]])
    io = IOConfig(out_noise=0.0, out_bound=12.0)  # NM/BM on in the config, forced off for reads
    e = torch.eye(2)
    y = read_io(W, e, io, seed=0, offset=0)
    out_bin = 24 / 510
    expect = torch.clamp(torch.round(W.t() / out_bin) * out_bin, -12, 12)  # column reads, clipped at 12
    assert torch.allclose(y, expect, atol=1e-6)
    # row read through the transpose: x (B, O) -> (B, I)
    assert torch.allclose(read_io(W, e, io, seed=0, offset=0, transposed=True),
                          torch.clamp(torch.round(W / out_bin) * out_bin, -12, 12), atol=1e-6)


@pytest.mark.compiled
def test_compiled_noise_grid_gives_the_reference_reads():
    """The periphery draws its noise through ``ops.random_grid`` (the compiled Philox grid when the
    compiled backend is active): a noisy forward (output noise, stochastic rounding in DAC and ADC,
    input and weight noise, iterative BM) and backward must equal the pure-torch ``rng`` draws'
    result (normals may differ by one float ulp with probability ~1e-8, so allow a quantiser bin on
    a vanishing fraction of entries)."""
    from analogtrain import ops
    from analogtrain.ops import build

    try:
        build.build_cpu()
    except build.BuildError as e:  # pragma: no cover - machines without a C++ toolchain
        pytest.skip(f"no compiled kernel: {e}")
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(40, 70, generator=gen) * 0.3
    x = torch.randn(33, 70, generator=gen)
    d = torch.randn(33, 40, generator=gen)
    io = IOConfig(out_noise=0.1, inp_noise=0.02, inp_sto_round=True, out_sto_round=True, w_noise=0.02,
                  w_noise_type="additive_constant", out_bound=3.0)
    old = ops.get_backend()
    try:
        outs = {}
        for be in ("compiled", "reference"):
            ops.set_backend(be)
            outs[be] = (forward_io(W, x, io, seed=11, offset=5), backward_io(W, d, io, seed=11, offset=6))
    finally:
        ops.set_backend(old)
    for got, ref in zip(outs["compiled"], outs["reference"]):
        same = (got == ref).float().mean().item()
        assert same > 0.999, same
        assert torch.allclose(got, ref, atol=0.05)
    # and the noise is really there (a different offset gives a different read)
    assert not torch.equal(outs["compiled"][0], forward_io(W, x, io, seed=11, offset=7))
