"""Pipeline config validation, stage splitting of the registry models, and the clock-cycle model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from analogtrain.config.errors import ConfigError
from analogtrain.pipeline import PipelineConfig, PipelineExecutor, pipeline_from_config, split_stages
from analogtrain.pipeline.clock import StageCosts, async_period, sync_bubble_fraction, sync_minibatch_cycles
from analogtrain.pipeline.stages import layer_chain

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("node, key", [
    ({"mode": "pipedream"}, "trainer.pipeline.mode"),
    ({"stages": 0}, "trainer.pipeline.stages"),
    ({"stages": "three"}, "trainer.pipeline.stages"),
    ({"stages": [["a"], []]}, "trainer.pipeline.stages"),
    ({"stages": [["a"], ["a"]]}, "trainer.pipeline.stages"),
    ({"micro_batches": 0}, "trainer.pipeline.micro_batches"),
    ({"mvm_cycles": 0}, "trainer.pipeline.mvm_cycles"),
    ({"pulse_cycles": -1}, "trainer.pipeline.pulse_cycles"),
    ({"digital_bl": 0}, "trainer.pipeline.digital_bl"),
    ({"forward_cycles": -2}, "trainer.pipeline.forward_cycles"),
    ({"stages": 3, "update_cycles": [1, 2]}, "trainer.pipeline.update_cycles"),
    ({"bubbles": 1}, "trainer.pipeline.bubbles"),
])
def test_validation_names_the_key(node, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        pipeline_from_config(node)


def test_structured_config_and_overrides():
    cfg = OmegaConf.structured(PipelineConfig)
    assert cfg.mode == "none" and cfg.stages == 2
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["mode=async", "stages=[[fc1],[fc2,out]]", "micro_batches=4"]))
    p = pipeline_from_config(cfg)
    assert p.mode == "async" and p.stages == [["fc1"], ["fc2", "out"]] and p.micro_batches == 4
    with pytest.raises(ConfigError, match="allowed"):
        pipeline_from_config(OmegaConf.merge(OmegaConf.structured(PipelineConfig), {"mode": "gpipe"}))


# ----------------------------------------------------------------------------- stages
def seq():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))


def test_split_by_count_balances_weight_layers_and_attaches_activations():
    st = split_stages(seq(), 3)
    assert [s.names for s in st] == [["0", "1", "2"], ["3", "4"], ["5"]]
    st = split_stages(seq(), 2)
    assert [len([n for n, _ in s.weight_layers()]) for s in st] in ([2, 1], [1, 2])
    with pytest.raises(ConfigError, match=r"trainer\.pipeline\.stages.*1 <= stages <= 3"):
        split_stages(seq(), 4)


def test_split_by_names():
    st = split_stages(seq(), [["1"], ["3", "5"]])
    assert [s.names for s in st] == [["0", "1", "2"], ["3", "4", "5"]]
    with pytest.raises(ConfigError, match="not a layer"):
        split_stages(seq(), [["1"], ["fc9"]])
    with pytest.raises(ConfigError, match="chain order"):
        split_stages(seq(), [["3"], ["1", "5"]])
    with pytest.raises(ConfigError, match="in no group"):
        split_stages(seq(), [["1"], ["5"]])


def test_model_without_chain_is_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(ConfigError, match="pipeline_layers"):
        split_stages(Branchy(), 2)


REGISTRY_INPUTS = {"mlp": (64,), "linear": (64,), "lenet": (1, 8, 8), "swin": (3, 8, 8)}


@pytest.mark.parametrize("name", sorted(REGISTRY_INPUTS))
def test_registry_model_chains_compute_the_model(name):
    """Every registry model (tiny variant) splits into stages whose composition is the model, and a
    sync pipeline step matches an ordinary step."""
    from analogtrain.config.schema import LeNetConfig, LinearConfig, MLPConfig, SwinConfig
    from analogtrain.models import MODELS, build_model

    assert set(MODELS) <= set(REGISTRY_INPUTS), "a new registry model needs an entry here"
    schema = {"mlp": MLPConfig, "linear": LinearConfig, "lenet": LeNetConfig, "swin": SwinConfig}[name]
    cfg = OmegaConf.merge(OmegaConf.structured(schema), MODELS[name].tiny)
    shape = REGISTRY_INPUTS[name]
    torch.manual_seed(0)
    model = build_model(cfg, shape, 3)
    x = torch.randn(4, *shape)
    model.eval()
    with torch.no_grad():
        y = x
        for _, m in layer_chain(model):
            y = m(y)
        assert torch.equal(y, model(x))
    model.train()
    n_heavy = sum(1 for _, m in layer_chain(model) if any(isinstance(w, (nn.Linear, nn.Conv2d)) for w in m.modules()))
    S = min(2, n_heavy)
    import copy

    ref = copy.deepcopy(model)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.05)
    loss = F.cross_entropy(ref(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt_r.step()
    ex = PipelineExecutor(model, torch.optim.SGD(model.parameters(), lr=0.05), F.cross_entropy,
                          {"mode": "sync", "stages": S, "micro_batches": 2})
    res = ex.train_step(x, torch.tensor([0, 1, 2, 0]))
    assert res.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for p, q in zip(ref.parameters(), model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


# ----------------------------------------------------------------------------- cycles
def unit_chain(S):
    return nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(S)])


def run_cycles(mode, S, M, batches, B, f=1, b=1, u=1, drain=False):
    model = unit_chain(S)
    ex = PipelineExecutor(model, torch.optim.SGD(model.parameters(), lr=0.0), F.mse_loss,
                          {"mode": mode, "stages": S, "micro_batches": M, "forward_cycles": f,
                           "backward_cycles": b, "update_cycles": u})
    out = []
    for _ in range(batches):
        out.append(ex.train_step(torch.ones(B, 1), torch.ones(B, 1)).cycles)
    if drain:
        ex.drain()
        out.append(ex.clock.now)
    return out, ex


def test_cycles_none_hand_computed():
    # S=2, B=2 samples, 1 cycle per sample per op: F0 [0,2] F1 [2,4] B1 [4,6] (U1 [6,8]) B0 [6,8] U0 [8,10]
    cyc, ex = run_cycles("none", 2, 1, 3, 2)
    assert cyc == [10, 20, 30]
    assert ex.clock.bubble_fraction() == pytest.approx(1 - 2 * 6 / (2 * 10))


def test_cycles_sync_hand_computed():
    # S=2, M=2 micro-batches of 1 sample: (M+S-1)(F+B) + U = 3·2 + 2 = 8 per mini-batch
    cyc, ex = run_cycles("sync", 2, 2, 3, 2)
    assert cyc == [8, 16, 24]
    assert sync_minibatch_cycles(2, 2, 1, 1, 2) == 8
    assert ex.clock.bubble_fraction() == pytest.approx(sync_bubble_fraction(2, 2, 1, 1, 2)) == pytest.approx(0.25)
    # 4 stages, 8 micro-batches of 2 samples, f=3 b=5 u=2 per sample: (8+3)(6+10) + 16·2 = 208
    cyc, _ = run_cycles("sync", 4, 8, 2, 16, f=3, b=5, u=2)
    assert cyc == [208, 416]


def test_cycles_async_hand_computed():
    # S=2, 1-sample micro-batches, f=b=u=1 (timeline worked by hand):
    # stage 0: F0[0,1] F1[1,2] B0[3,4] U0[4,5] F2[5,6] B1[6,7] U1[7,8] F3[8,9] B2[9,10] U2[10,11] | B3[12,13] U3[13,14]
    # stage 1: F0[1,2] B0[2,3] U0[3,4] F1[4,5] B1[5,6] U1[6,7] F2[7,8] B2[8,9] U2[9,10] F3[10,11] B3[11,12] U3[12,13]
    cyc, ex = run_cycles("async", 2, 1, 4, 1, drain=True)
    assert cyc == [4, 7, 10, 13, 14]
    assert ex.clock.bubble_fraction() == pytest.approx(1 - 24 / 28)
    # steady state: one micro-batch per max_s (f+b+u) (4 stages, 2-sample micro-batches: 2·(1+2+3) = 12)
    cyc, _ = run_cycles("async", 4, 4, 6, 8, f=1, b=2, u=3)
    steps = [b - a for a, b in zip(cyc[2:], cyc[3:])]
    assert steps == [4 * async_period([StageCosts(1, 2, 3)] * 4, 2)] * 3


def test_async_beats_sync_and_none_by_the_bubbles():
    S, M, B = 4, 4, 16
    none, _ = run_cycles("none", S, 1, 20, B, drain=False)
    sync, _ = run_cycles("sync", S, M, 20, B)
    asyn, _ = run_cycles("async", S, M, 20, B, drain=True)
    # per sample, f = b = u = 1: none ≈ S·2 + 1, sync ≈ ((M+S-1)·2·B/M + B)/B, async ≈ 3
    assert none[-1] / (20 * B) == pytest.approx(2 * S + 1)
    assert sync[-1] / (20 * B) == pytest.approx((M + S - 1) * 2 / M + 1)
    assert asyn[-1] / (20 * B) == pytest.approx(3, rel=0.05)


def test_derived_costs_from_tiles():
    from omegaconf import OmegaConf as OC

    from analogtrain.algorithms import build_algorithm
    from analogtrain.tiles import TileConfig

    tc = TileConfig()
    tc.update.desired_bl = 10
    cfg = OC.create({"algo": {"name": "sgd"}, "device": {"name": "softbounds"}, "tile": OC.structured(tc),
                     "model": {"name": "lenet"}})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 8 * 8, 3))
    model = build_algorithm(cfg, {"device": 1, "pulse": 2}).prepare(model)
    ex = PipelineExecutor(model, torch.optim.SGD(model.parameters(), lr=0.0), F.cross_entropy,
                          {"mode": "sync", "stages": 2, "mvm_cycles": 32, "pulse_cycles": 1})
    ex.train_step(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    # conv: 64 patches per image -> f = 64·32, u = 64·BL; linear: 1 vector -> f = 32, u = BL
    assert ex.costs[0] == StageCosts(64 * 32, 64 * 32, 64 * 10)
    assert ex.costs[1] == StageCosts(32, 32, 10)
