"""``model=swin`` and its presets: architecture sizes, geometry checks, which layers are analog under an
analog algorithm (``model.keep_digital``), forward/backward through analog tiles, ``data.resize``."""

from __future__ import annotations

import pytest
import torch

from analogtrain.config.errors import ConfigError
from analogtrain.models import build_model
from analogtrain.nn.convert import analog_layers
from analogtrain.nn.layers import AnalogConv2d, AnalogLinear
from analogtrain.utils.seeding import derive_seeds

# tiny Swin: 16x16 inputs, patch 2 -> 8x8 tokens, window 4, one stage of one block, width 16
TINY = ["model.embed_dim=16", "model.depths=[1]", "model.num_heads=[2]"]
# its Linear layers: one block (qkv, proj, fc1, fc2) + the classifier
TINY_LINEARS = ["layers.0.blocks.0.attn.qkv", "layers.0.blocks.0.attn.proj", "layers.0.blocks.0.mlp.fc1",
                "layers.0.blocks.0.mlp.fc2", "head.fc"]


def prepared(compose, overrides, shape=(1, 16, 16), n_out=10):
    """(cfg, analog model, algo) built the way run.train builds them."""
    from analogtrain.algorithms.base import build_algorithm

    cfg = compose(["model=swin", *overrides])
    seeds = derive_seeds(cfg.seed)
    torch.manual_seed(seeds["init"])
    model = build_model(cfg.model, shape, n_out)
    algo = build_algorithm(cfg, seeds)
    return cfg, algo.prepare(model), algo


def linear_names(model):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize(("keep", "analog", "digital"), [
    (None, TINY_LINEARS, ["patch_embed.proj"]),  # conf/model/swin.yaml default: keep_digital [patch_embed]
    ("[patch_embed,head]", TINY_LINEARS[:-1], ["patch_embed.proj", "head.fc"]),
    ("[]", ["patch_embed.proj", *TINY_LINEARS], []),
    ("['*.attn.*']", ["patch_embed.proj"] + TINY_LINEARS[2:], TINY_LINEARS[:2]),
])
def test_every_linear_is_analog_except_keep_digital(compose, keep, analog, digital):
    over = [*TINY, "algo=sgd"] + ([f"model.keep_digital={keep}"] if keep is not None else [])
    _, model, _ = prepared(compose, over)
    got = dict(analog_layers(model))
    assert sorted(got) == sorted(analog)
    for name in analog:
        assert isinstance(got[name], AnalogConv2d if name == "patch_embed.proj" else AnalogLinear)
    still = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert sorted(still) == sorted(digital)
    # LayerNorms and the relative position biases stay digital parameters of the model
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert any(n.endswith("relative_position_bias_table") for n, _ in model.named_parameters())


def test_default_small_swin_counts(compose):
    """The 32x32 default: 2 stages x 2 blocks x (qkv, proj, fc1, fc2) + patch merging + head = 18 Linear,
    all analog; the patch-embedding conv digital."""
    _, model, _ = prepared(compose, ["algo=cttv2"], shape=(1, 32, 32))
    names = [n for n, _ in analog_layers(model)]
    assert len(names) == 18 and "layers.1.downsample.reduction" in names and "head.fc" in names
    assert linear_names(model) == [] and isinstance(model.patch_embed.proj, torch.nn.Conv2d)


def test_analog_swin_forward_backward_shapes_and_update(compose):
    _, model, algo = prepared(compose, [*TINY, "algo=sgd", "trainer.lr=0.1"])
    opt = algo.build_optimizer(model, lr=0.1)
    x = torch.randn(3, 1, 16, 16, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 10)
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2]))
    loss.backward()
    assert x.grad.shape == x.shape and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # digital parameters (norms, position biases, digital biases) get gradients; tiles cache (x, d)
    assert model.layers[0].blocks[0].norm1.weight.grad is not None
    qkv = dict(analog_layers(model))["layers.0.blocks.0.attn.qkv"]
    before = qkv.weight.clone()
    tiles = list(qkv.tiles())
    assert all(t.has_cache for t in tiles)
    opt.step()
    assert not torch.equal(before, qkv.weight)  # the pulsed update moved the analog weights


def test_presets_have_the_documented_architectures(compose):
    import timm

    small = build_model(compose(["model=swin"]).model, (1, 32, 32), 10)
    assert sum(p.numel() for p in small.parameters()) == pytest.approx(0.30e6, rel=0.02)
    tiny32 = build_model(compose(["model=swin_tiny32"]).model, (3, 32, 32), 10)
    assert [len(s.blocks) for s in tiny32.layers] == [2, 2, 6, 2] and tiny32.embed_dim == 96
    assert tiny32.patch_embed.proj.kernel_size == (2, 2)
    # swin_224 is exactly timm's swin_tiny_patch4_window7_224: same keys and shapes
    m224 = build_model(compose(["model=swin_224"]).model, (3, 224, 224), 10)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10).state_dict()
    assert {k: tuple(v.shape) for k, v in m224.state_dict().items()} == {k: tuple(v.shape) for k, v in ref.items()}


@pytest.mark.parametrize(("over", "shape", "key"), [
    (["model.img_size=64"], (3, 32, 32), "model.img_size"),
    (["model.window_size=3"], (3, 32, 32), "model.window_size"),  # 16x16 grid not tiled by 3x3 windows
    (["model.patch_size=3"], (3, 32, 32), "model.patch_size"),
    (["model.depths=[2,2,2,2,2,2]", "model.num_heads=[3,6,12,24,48,96]"], (3, 32, 32), "model.depths"),
    (["model.num_heads=[5,6]"], (3, 32, 32), "model.num_heads[0]"),
    (["model.num_heads=[3]"], (3, 32, 32), "model.num_heads"),
    ([], (20,), "model.name"),
    (["model.variant=vit_tiny_patch16_224"], (3, 32, 32), "model.variant"),  # no Swin keywords
    (["model.variant=resnet18"], (3, 32, 32), "model.variant"),
    (["model.variant=swinv2_tiny_window8_256"], (3, 32, 32), "model.variant"),  # builds; not the v1 class
])
def test_geometry_errors_name_the_key(compose, over, shape, key):
    with pytest.raises(ConfigError) as ei:
        build_model(compose(["model=swin", *over]).model, shape, 10)
    assert ei.value.key == key


def test_last_stage_window_may_cover_the_whole_grid(compose):
    """swin_tiny32's last stage has a 2x2 grid < window 4: allowed (window = whole grid, no shift)."""
    m = build_model(compose(["model=swin_tiny32", "model.embed_dim=12", "model.num_heads=[1,2,3,4]"]).model,
                    (1, 32, 32), 4)
    assert m(torch.randn(1, 1, 32, 32)).shape == (1, 4)


def test_keep_digital_is_a_field_of_every_model_schema(compose):
    from analogtrain.algorithms.base import build_algorithm

    for name in ("mlp", "lenet", "linear", "swin"):
        cfg = compose([f"model={name}"])
        assert "keep_digital" in cfg.model
    cfg = compose(["model=mlp", "model.hidden_sizes=[8]", "model.keep_digital=[layers.out]", "algo=sgd"])
    model = build_algorithm(cfg, derive_seeds(0)).prepare(build_model(cfg.model, (1, 8, 8), 10))
    assert [n for n, _ in analog_layers(model)] == ["layers.fc1"]
    assert isinstance(model.layers.out, torch.nn.Linear)
    # a glob that keeps no layer digital is a typo: refused, naming the key and the layers
    cfg = compose(["model=mlp", "model.hidden_sizes=[8]", "model.keep_digital=[layers.outt]", "algo=sgd"])
    with pytest.raises(ConfigError, match="'layers.outt' matches no Linear/Conv2d layer.*layers.fc1") as ei:
        build_algorithm(cfg, derive_seeds(0)).prepare(build_model(cfg.model, (1, 8, 8), 10))
    assert ei.value.key == "model.keep_digital"


def test_data_resize_and_pad_to(compose):
    from analogtrain.data import build_data

    cfg = compose(["data=digits", "data.pad_to=12", "data.resize=24", "data.val_fraction=0"])
    b = build_data(cfg.data, 0)
    x, _ = next(b.train_batches(0))
    assert b.input_shape == (1, 24, 24) and x.shape[1:] == (1, 24, 24)
    # resize is applied after padding: a constant image stays constant; padding shows as a border
    plain = build_data(compose(["data=digits", "data.val_fraction=0", "data.normalize=false"]).data, 0)
    big = build_data(compose(["data=digits", "data.val_fraction=0", "data.normalize=false", "data.resize=16"]).data, 0)
    xs, _ = next(plain.train_batches(0))
    xb, _ = next(big.train_batches(0))
    assert xb.shape[-1] == 16 and torch.allclose(xb.mean(dim=(2, 3)), xs.mean(dim=(2, 3)), atol=0.02)
    with pytest.raises(ConfigError, match="data.pad_to: only applies to image data"):  # not silently ignored
        build_data(compose(["data=synthetic", "model=linear", "data.pad_to=32"]).data, 0)
    with pytest.raises(ConfigError, match="data.resize"):
        from analogtrain.config.validate import validate_config

        validate_config(compose(["data.resize=-1"]))
