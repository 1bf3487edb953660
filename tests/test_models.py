"""Model registry: every registered model (tiny variant) builds for the data shapes it supports, maps
(B, *input_shape) -> (B, n_out) and learns a batch; architecture facts of the default MLP and LeNet-5."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from analogtrain.config.errors import ConfigError
from analogtrain.config.schema import LeNetConfig, LinearConfig, MLPConfig, SwinConfig
from analogtrain.models import MODELS, build_model

SCHEMAS = {"mlp": MLPConfig, "lenet": LeNetConfig, "swin": SwinConfig, "linear": LinearConfig}
SHAPES = {"digits": (1, 8, 8), "fashion": (1, 28, 28), "cifar": (3, 32, 32), "vector": (20,)}
IMAGE_ONLY = {"lenet", "swin"}


def mcfg(name, tiny=True, **kw):
    over = dict(MODELS[name].tiny) if tiny else {}
    over.update(kw)
    return OmegaConf.merge(OmegaConf.structured(SCHEMAS[name]), over)


CASES = [(m, s) for m in sorted(MODELS) for s in SHAPES if not (m in IMAGE_ONLY and s == "vector")
         and not (m == "swin" and s == "fashion")]


def test_every_registered_model_has_a_schema():
    assert set(MODELS) == set(SCHEMAS)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_tiny_variant_forward_backward_and_learns(name, shape):
    torch.manual_seed(0)
    in_shape = SHAPES[shape]
    model = build_model(mcfg(name), in_shape, 5)
    x = torch.randn(6, *in_shape)
    y = torch.arange(6) % 5
    out = model(x)
    assert out.shape == (6, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_default_mlp_is_784_256_128_10_sigmoid_and_adapts_to_the_input():
    m = build_model(mcfg("mlp", tiny=False), (1, 28, 28), 10)
    lin = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(784, 256), (256, 128), (128, 10)]
    assert sum(isinstance(mod, torch.nn.Sigmoid) for mod in m.modules()) == 2
    small = build_model(mcfg("mlp", tiny=False), (1, 8, 8), 10)
    assert [l.in_features for l in small.modules() if isinstance(l, torch.nn.Linear)][0] == 64


def test_lenet5_has_the_classic_size_on_mnist():
    m = build_model(mcfg("lenet", tiny=False), (1, 28, 28), 10)
    # LeNet-5: conv 6@5x5 (156) + conv 16@5x5 (2416) + fc 400-120 (48120) + 120-84 (10164) + 84-10 (850)
    assert sum(p.numel() for p in m.parameters()) == 156 + 2416 + 48120 + 10164 + 850
    c32 = build_model(mcfg("lenet", tiny=False), (3, 32, 32), 10)
    assert c32.classifier.fc1.in_features == 16 * 5 * 5
    d8 = build_model(mcfg("lenet", tiny=False), (1, 8, 8), 10)
    assert d8.features.conv1.kernel_size == (3, 3) and d8.classifier.fc1.in_features == 16 * 2 * 2


def test_linear_model_is_one_bias_free_layer():
    m = build_model(mcfg("linear"), (20,), 10)
    (w,) = list(m.parameters())
    assert w.shape == (10, 20)


def test_swin_default_is_a_real_small_swin():
    m = build_model(mcfg("swin", tiny=False), (3, 32, 32), 100)
    names = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
    assert any(n.endswith("attn.qkv") for n in names) and any(n.endswith("mlp.fc1") for n in names)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ConfigError, match="model.img_size"):
        build_model(mcfg("swin", img_size=64), (3, 32, 32), 10)


def test_unknown_model_and_bad_shapes():
    with pytest.raises(ConfigError, match="model.name: 'vit' is unknown"):
        build_model(OmegaConf.create({"name": "vit"}), (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="lenet needs image inputs"):
        build_model(mcfg("lenet"), (20,), 10)


def test_init_is_seeded():
    torch.manual_seed(3)
    a = build_model(mcfg("lenet"), (1, 8, 8), 10).state_dict()
    torch.manual_seed(3)
    b = build_model(mcfg("lenet"), (1, 8, 8), 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
