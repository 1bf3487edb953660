"""Analog layers: tile splitting, conv via unfold, analog/digital bias, convert_to_analog (timm)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from analogtrain.algorithms.analog import AnalogSGD
from analogtrain.devices import device_from_config
from analogtrain.nn import (AnalogConv2d, AnalogLinear, analog_layers, analog_tiles, convert_to_analog,
                            is_kept_digital, split_sizes)
from analogtrain.tiles import SGDRule, TileConfig, derive_seed
from analogtrain.tiles.config import IOConfig
from analogtrain.tiles.periphery import forward_io, io_bins

torch.set_num_threads(1)

DEV = device_from_config(dict(name="softbounds", dw_min=0.01, w_max=5.0, w_min=-5.0, dw_min_dtod=0.0,
                              dw_min_std=0.0, up_down_dtod=0.0, w_max_dtod=0.0, w_min_dtod=0.0))
PERFECT = IOConfig(is_perfect=True)


def factory(cfg: TileConfig):
    def make(o, i, name, perfect_bias=False):
        return SGDRule(DEV, o, i, cfg, seed_device=derive_seed(0, name), seed_pulse=1,
                       perfect_bias=perfect_bias)
    return make


def perfect_cfg(**kw) -> TileConfig:
    return TileConfig(forward=PERFECT, backward=PERFECT, **kw)


def test_split_sizes_nearly_equal():
    assert split_sizes(1030, 512) == [344, 343, 343]
    assert split_sizes(512, 512) == [512]
    assert split_sizes(1024, 512) == [512, 512]
    assert split_sizes(7, 0) == [7]
    assert sum(split_sizes(1000, 3)) == 1000 and max(split_sizes(1000, 3)) <= 3


def test_linear_split_equals_unsplit_when_perfect():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(20, 40, generator=g), torch.randn(20, generator=g)
    x = torch.randn(7, 3, 40, generator=g)  # extra leading dims are kept
    cfg = perfect_cfg(max_input_size=16, max_output_size=12)
    lin = AnalogLinear(40, 20, tile_cfg=cfg, rule_factory=factory(cfg), name="fc")
    lin.set_weights(W, b)
    m = lin.matrices[0]
    assert m.in_splits == [14, 13, 13] and m.out_splits == [10, 10] and len(m.tiles) == 6
    assert [(t.out_size, t.in_size) for t in m.tiles][:3] == [(10, 14), (10, 13), (10, 13)]
    assert torch.allclose(lin(x), x @ W.t() + b, atol=1e-5)
    got_W, got_b = lin.get_weights()
    assert torch.equal(got_W, W) and torch.equal(got_b, b)


def test_linear_split_within_quantisation_noise_free():
    g = torch.Generator().manual_seed(1)
    W, x = torch.randn(6, 30, generator=g) * 0.3, torch.randn(50, 30, generator=g)
    io = IOConfig(out_noise=0.0)
    cfg = TileConfig(forward=io, backward=io, max_input_size=10)
    lin = AnalogLinear(30, 6, bias=False, tile_cfg=cfg, rule_factory=factory(cfg), name="fc")
    lin.set_weights(W)
    with torch.no_grad():
        y = lin(x)
    inp_bin, out_bin = io_bins(io)
    bound = torch.zeros(50, 6)
    for k in range(3):  # each tile quantises relative to its own α = max|x_block|
        xb, Wb = x[:, 10 * k:10 * (k + 1)], W[:, 10 * k:10 * (k + 1)]
        alpha = xb.abs().amax(1, keepdim=True)
        bound += alpha * (out_bin / 2 + Wb.abs().sum(1)[None, :] * inp_bin / 2)
        # and each block is exactly the tile's periphery output
    assert ((y - x @ W.t()).abs() <= bound + 1e-6).all()
    assert (y - x @ W.t()).abs().max() > 0  # it is quantised, not exact


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), dilation=2, padding=(2, 1)),
    dict(kernel_size=3, groups=2, padding=1),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding="same"),
])
def test_conv_equals_conv2d_when_perfect(kw):
    g = torch.Generator().manual_seed(2)
    conv = torch.nn.Conv2d(4, 6, **kw)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(6, generator=g))
    cfg = perfect_cfg(max_input_size=10)  # 4·9 inputs -> split tiles too
    model = convert_to_analog(torch.nn.Sequential(conv), cfg, factory(cfg))
    a = model[0]
    assert isinstance(a, AnalogConv2d)
    x = torch.randn(2, 4, 9, 8, generator=g)
    assert torch.allclose(a(x), conv(x), atol=1e-4)
    assert torch.allclose(a.weight, conv.weight) and a.weight.shape == conv.weight.shape


def test_conv_tile_batch_is_unfolded_patches():
    g = torch.Generator().manual_seed(3)
    cfg = perfect_cfg()
    a = AnalogConv2d(3, 5, 3, stride=1, padding=1, tile_cfg=cfg, rule_factory=factory(cfg), name="c")
    a.set_weights(torch.randn(5, 3, 3, 3, generator=g) * 0.3)
    x = torch.randn(2, 3, 6, 7, generator=g)
    y = a(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    (tile,) = list(a.tiles())
    (cx, cd), = tile._cache
    patches = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    assert cx.shape == (2 * 6 * 7, 27)  # tile batch = N·H_out·W_out
    assert torch.equal(cx, patches)
    assert torch.equal(cd, gy.permute(0, 2, 3, 1).reshape(-1, 5))


def test_analog_bias_column_is_pulsed_and_perfect_bias_bypasses_periphery():
    g = torch.Generator().manual_seed(4)
    W, b = torch.randn(3, 5, generator=g) * 0.2, torch.randn(3, generator=g) * 0.2
    cfg = perfect_cfg(digital_bias=False)
    lin = AnalogLinear(5, 3, tile_cfg=cfg, rule_factory=factory(cfg), name="fc")
    lin.set_weights(W, b)
    assert lin.bias is None and lin.matrices[0].tiles[0].in_size == 6
    x = torch.randn(4, 5, generator=g)
    assert torch.allclose(lin(x), x @ W.t() + b, atol=1e-6)
    opt = AnalogSGD(torch.nn.Sequential(lin), lr=0.5)
    lin(x).sum().backward()
    opt.step()
    W2, b2 = lin.get_weights()
    assert (b2 < b).all()  # d = 1 for every output, x = 1 on the bias column: bias moves down
    # perfect bias (aihwkit): the bias column's devices are sampled ideal (scales dw_min, bounds ×100);
    # the column is read through the periphery like any other input
    io = IOConfig(out_noise=0.0)
    cfg2 = TileConfig(forward=io, backward=io, digital_bias=False, analog_bias_perfect=True)
    lin2 = AnalogLinear(5, 3, tile_cfg=cfg2, rule_factory=factory(cfg2), name="fc2")
    lin2.set_weights(W, b)
    tile = lin2.matrices[0].tiles[0]
    with torch.no_grad():
        y = lin2(x)
    Wt = tile.rule.effective_weight()
    xa = torch.cat([x, torch.ones(4, 1)], 1)
    assert torch.equal(y, forward_io(Wt, xa, io, seed=int(tile.io_seed), offset=0))
    from analogtrain.devices import params as P

    prm, dw_min = tile.rule.array.params, tile.rule.array.device_cfg.dw_min
    assert prm[P.P_BMAX][:, -1].min() > 10 * prm[P.P_BMAX][:, 0].max()  # bounds ×100
    assert torch.all(prm[P.P_SCALE_UP][:, -1] == dw_min) and torch.all(prm[P.P_SCALE_DOWN][:, -1] == dw_min)


def test_no_weight_gradients_are_formed():
    cfg = perfect_cfg()
    model = convert_to_analog(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
                                                  torch.nn.Linear(8, 2, bias=False)), cfg, factory(cfg))
    model(torch.randn(3, 4)).pow(2).sum().backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad == ["0.bias"]
    for _, t in analog_tiles(model):
        assert t.has_cache and t.analog_ctx.grad is None
        assert all(not b.requires_grad for b in t.buffers())


def test_keep_digital_globs():
    assert is_kept_digital("head", ["head"])
    assert is_kept_digital("head.fc", ["head"])
    assert is_kept_digital("patch_embed.proj", ["patch_embed.*"])
    assert is_kept_digital("layers.0.blocks.1.attn.proj", ["*.attn.proj"])
    assert not is_kept_digital("headx", ["head"])
    assert not is_kept_digital("layers.0.mlp.fc1", ["patch_embed.*", "head"])


def test_multihead_attention_stays_digital():
    model = torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2, batch_first=True))
    cfg = perfect_cfg()
    convert_to_analog(model, cfg, factory(cfg))
    assert isinstance(model[0].out_proj, torch.nn.Linear)


def test_convert_timm_vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8,
                              embed_dim=16, depth=1, num_heads=2, num_classes=3)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    digital = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    cfg = perfect_cfg()
    convert_to_analog(model, cfg, factory(cfg), keep_digital=["head"])
    layers = dict(analog_layers(model))
    assert set(layers) == set(digital) - {"head"}
    assert isinstance(model.head, torch.nn.Linear)
    assert isinstance(layers["patch_embed.proj"], AnalogConv2d)
    assert isinstance(layers["blocks.0.attn.qkv"], AnalogLinear)
    for n, layer in layers.items():
        assert torch.equal(layer.weight, digital[n].weight.detach())  # programmed (inside ±5 bounds)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4)
    # trains through AnalogSGD: analog weights change, no weight grads
    model.train()
    opt = AnalogSGD(model, lr=0.1)
    before = layers["blocks.0.mlp.fc1"].weight
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    assert not torch.equal(layers["blocks.0.mlp.fc1"].weight, before)
    assert all(not t.has_cache for _, t in analog_tiles(model))


def test_convert_timm_swin_trains():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=16, patch_size=2,
                              window_size=4, embed_dim=8, depths=(1,), num_heads=(2,), num_classes=3)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
    cfg = perfect_cfg()
    convert_to_analog(model, cfg, factory(cfg), keep_digital=["patch_embed.*"])
    names = set(dict(analog_layers(model)))
    assert isinstance(model.patch_embed.proj, torch.nn.Conv2d)
    assert {"layers.0.blocks.0.attn.qkv", "layers.0.blocks.0.attn.proj", "layers.0.blocks.0.mlp.fc1",
            "head.fc"} <= names
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4)
    model.train()
    opt = AnalogSGD(model, lr=0.1)
    F.cross_entropy(model(x), torch.tensor([0, 2])).backward()
    opt.step()
    assert all(t.rule.array.offset.item() == 1 for _, t in analog_tiles(model))
