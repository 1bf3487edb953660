"""AnalogSGD optimizer and ``algo=sgd``: group lr + schedulers, exact d, checkpoints, metrics, learning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from analogtrain.algorithms import build_algorithm
from analogtrain.algorithms.analog import AnalogSGD
from analogtrain.algorithms.sgd import SGDAlgorithm
from analogtrain.config.errors import ConfigError
from analogtrain.nn import AnalogLinear, analog_tiles, convert_to_analog
from analogtrain.tiles import TileConfig, TileRule
from analogtrain.tiles.config import IOConfig

torch.set_num_threads(1)


class RecordingRule(TileRule):
    """A digital stand-in that records every update call (x, d, lr) and applies W −= lr·dᵀx."""

    def __init__(self, o, i, cfg):
        super().__init__(o, i, cfg)
        self.register_buffer("W", torch.zeros(o, i))
        self.calls = []

    def effective_weight(self):
        return self.W

    def set_weights(self, W):
        self.W.copy_(W)

    def update(self, x, d, lr):
        self.calls.append((x.clone(), d.clone(), lr))
        self.W -= lr * d.t() @ x


def recording_model(cfg=None):
    cfg = cfg or TileConfig(forward=IOConfig(is_perfect=True), backward=IOConfig(is_perfect=True))
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    torch.manual_seed(0)
    for m in model:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.3)
    return convert_to_analog(model, cfg, lambda o, i, n: RecordingRule(o, i, cfg))


def test_step_uses_group_lr_scheduler_and_concatenates_batches():
    model = recording_model()
    opt = AnalogSGD(model, lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert len(opt.param_groups) == 3  # digital + one per tile
    x1, x2 = torch.randn(2, 5), torch.randn(3, 5)
    model(x1).sum().backward()
    model(x2).sum().backward()  # two backward passes before one step: one update with B = 5
    opt.step()
    sched.step()
    rule = model[0].matrices[0].tiles[0].rule
    (x, d, lr), = rule.calls
    assert lr == 0.2 and x.shape == (5, 5) and d.shape == (5, 4)
    assert torch.equal(x, torch.cat([x1, x2]))
    opt.zero_grad()
    model(x1).sum().backward()
    opt.step()
    assert rule.calls[-1][2] == 0.1  # the scheduler changed the analog group's lr
    # lr 0 drops the cached data
    for g in opt.param_groups:
        g["lr"] = 0.0
    model(x1).sum().backward()
    opt.step()
    assert len(rule.calls) == 2 and all(not t.has_cache for _, t in analog_tiles(model))


def test_update_gets_exact_gradient_and_digital_params_take_sgd():
    # noisy periphery: the d handed to the update must still be the exact dL/dy of the layer output
    io = IOConfig(out_noise=0.2)
    model = recording_model(TileConfig(forward=io, backward=io))
    opt = AnalogSGD(model, lr=0.1)
    outs = {}
    model[2].register_forward_hook(lambda m, i, o: outs.__setitem__("y", o))
    y_in = {}
    model[0].register_forward_hook(lambda m, i, o: y_in.__setitem__("y", o))
    x = torch.randn(6, 5)
    out = model(x)
    outs["y"].retain_grad()
    y_in["y"].retain_grad()
    loss = (out ** 2).sum()
    loss.backward()
    b0 = model[0].bias.detach().clone()
    g_b0 = model[0].bias.grad.clone()
    opt.step()
    (x0, d0, _), = model[0].matrices[0].tiles[0].rule.calls
    (x2, d2, _), = model[2].matrices[0].tiles[0].rule.calls
    assert torch.equal(d2, outs["y"].grad) and torch.equal(d0, y_in["y"].grad)
    assert torch.equal(x0, x)
    assert torch.allclose(model[0].bias, b0 - 0.1 * g_b0)


def alg_cfg(**over):
    cfg = OmegaConf.create({
        "algo": {"name": "sgd", "digital_momentum": 0.0, "digital_weight_decay": 0.0},
        "device": {"name": "softbounds", "dw_min": 0.01},
        "tile": OmegaConf.structured(TileConfig()),
        "model": {"name": "mlp"},
    })
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Sigmoid(), torch.nn.Linear(12, 3))


def test_algorithm_seeds_are_deterministic_per_layer():
    m1 = build_algorithm(alg_cfg(), {"device": 1, "pulse": 2}).prepare(mlp())
    m2 = build_algorithm(alg_cfg(), {"device": 1, "pulse": 2}).prepare(mlp())
    m3 = build_algorithm(alg_cfg(), {"device": 5, "pulse": 2}).prepare(mlp())
    p = lambda m, k: m[k].matrices[0].tiles[0].rule.array.params  # noqa: E731
    assert torch.equal(p(m1, 0), p(m2, 0)) and torch.equal(p(m1, 2), p(m2, 2))
    assert not torch.equal(p(m1, 0), p(m3, 0))
    seeds = lambda m: [int(t.rule.array.seed) for _, t in analog_tiles(m)]  # noqa: E731
    assert len(set(seeds(m1))) == 2


def test_checkpoint_round_trip_gives_identical_training():
    cfg = alg_cfg()
    algo = build_algorithm(cfg, {"device": 1, "pulse": 2})
    model = algo.prepare(mlp())
    opt = algo.build_optimizer(model, lr=0.1)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(4)]

    def step(m, o, xy):
        o.zero_grad()
        F.cross_entropy(m(xy[0]), xy[1]).backward()
        o.step()

    for xy in data[:2]:
        step(model, opt, xy)
    state = copy.deepcopy((model.state_dict(), opt.state_dict()))
    # a fresh run built with other seeds restores everything from the checkpoint
    algo2 = build_algorithm(cfg, {"device": 7, "pulse": 8})
    model2 = algo2.prepare(mlp())
    opt2 = algo2.build_optimizer(model2, lr=0.5)
    model2.load_state_dict(state[0])
    opt2.load_state_dict(state[1])
    for xy in data[2:]:
        step(model, opt, xy)
        step(model2, opt2, xy)
    for (k, v), v2 in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(v, v2), k
    assert opt2.param_groups[1]["lr"] == 0.1


def test_metrics_per_layer():
    algo = build_algorithm(alg_cfg(), {"device": 1, "pulse": 2})
    model = algo.prepare(mlp())
    opt = algo.build_optimizer(model, lr=0.1)
    F.cross_entropy(model(torch.randn(16, 8)), torch.randint(0, 3, (16,))).backward()
    opt.step()
    m = algo.metrics(model)
    for layer in ("0", "2"):
        for stat in ("pulses_per_update", "pulses_per_weight_sample", "frac_at_bounds", "w_mean", "w_std"):
            assert f"tile/{layer}/{stat}" in m
    assert m["tile/0/pulses_per_update"] > 0
    W = model[2].weight
    assert m["tile/2/w_std"] == pytest.approx(W.std(unbiased=False).item(), rel=1e-5)


def test_validation_names_keys():
    with pytest.raises(ConfigError, match="algo.digital_momentum"):
        SGDAlgorithm.validate(alg_cfg(**{"algo.digital_momentum": 1.5}))
    with pytest.raises(ConfigError, match="tile.update_mode"):
        SGDAlgorithm.validate(alg_cfg(**{"tile.update_mode": "fast"}))
    with pytest.raises(ConfigError, match="device"):
        SGDAlgorithm.validate(alg_cfg(**{"device.dw_min": -1.0}))
    SGDAlgorithm.validate(alg_cfg())


def test_keep_digital_from_model_config():
    cfg = alg_cfg(**{"model.keep_digital": ["2"]})
    model = build_algorithm(cfg, {"device": 1, "pulse": 2}).prepare(mlp())
    assert isinstance(model[0], AnalogLinear) and isinstance(model[2], torch.nn.Linear)


def test_analog_sgd_mlp_learns_digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    Xtr, ytr, Xte, yte = X[:1000], y[:1000], X[1000:1400], y[1000:1400]
    cfg = alg_cfg()
    algo = build_algorithm(cfg, {"device": 3, "pulse": 4})
    torch.manual_seed(0)
    model = algo.prepare(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(),
                                             torch.nn.Linear(32, 10)))
    opt = algo.build_optimizer(model, lr=0.5)  # soft-bounds ±0.6, dw_min 0.01, default IO and BL 31

    def test_loss():
        model.eval()
        with torch.no_grad():
            out = model(Xte)
        model.train()
        return F.cross_entropy(out, yte).item(), (out.argmax(1) == yte).float().mean().item()

    loss0, acc0 = test_loss()
    g = torch.Generator().manual_seed(0)
    for epoch in range(2):
        perm = torch.randperm(1000, generator=g)
        for k in range(0, 1000, 50):
            idx = perm[k:k + 50]
            opt.zero_grad()
            F.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
    loss1, acc1 = test_loss()
    assert loss1 < 0.7 * loss0, (loss0, loss1)  # seen: 2.34 -> 1.40
    assert acc1 > 0.6 and acc1 > acc0 + 0.4, (acc0, acc1)  # seen: 0.04 -> 0.78
