"""Split a model into pipeline stages: contiguous groups of its sequential layer chain.

A pipeline needs the model's forward as a chain ``y = L_n(...L_2(L_1(x)))`` of modules. The chain of a
model is, in this order of precedence:

1. ``model.pipeline_layers() -> list[(name, module)]`` if the model defines it (the protocol for new
   models: the composition of the returned modules must equal ``model.forward``);
2. a built-in adapter for the registry models (``MLP``: flatten + its layers; ``LeNet5``: features +
   classifier; timm ``SwinTransformer``: patch_embed, the Swin stages, norm, head);
3. ``nn.Sequential``: its children, nested ``nn.Sequential`` expanded.

Chain names are dotted module names (``layers.fc1``), the names a user writes in
``trainer.pipeline.stages`` groups. A *weight layer* is an ``nn.Linear``, ``nn.Conv2d`` or analog layer
(``AnalogLayer``); chain elements are weighted by how many they contain (a Swin stage holds many).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from analogtrain.config.errors import ConfigError

__all__ = ["Stage", "layer_chain", "split_stages", "weight_layers", "register_chain"]

KEY = "trainer.pipeline.stages"

# model class -> fn(model) -> list[(name, module)]
_ADAPTERS: list[tuple[Callable[[nn.Module], bool], Callable[[nn.Module], list]]] = []


def register_chain(match: Callable[[nn.Module], bool]):
    """Decorator: ``fn(model) -> [(name, module), ...]`` is the chain of models for which ``match`` holds."""

    def deco(fn):
        _ADAPTERS.append((match, fn))
        return fn

    return deco


def _expand(prefix: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children of an ``nn.Sequential`` (recursively), else the module itself."""
    if isinstance(module, nn.Sequential):
        out = []
        for name, child in module.named_children():
            out += _expand(f"{prefix}.{name}" if prefix else name, child)
        return out
    return [(prefix, module)]


def _is_cls(name: str, module_prefix: str):
    return lambda m: type(m).__name__ == name and type(m).__module__.startswith(module_prefix)


@register_chain(_is_cls("MLP", "analogtrain.models"))
def _mlp_chain(model):
    return [("flatten", model.flatten)] + _expand("layers", model.layers)


@register_chain(_is_cls("LeNet5", "analogtrain.models"))
def _lenet_chain(model):
    return _expand("features", model.features) + _expand("classifier", model.classifier)


@register_chain(_is_cls("SwinTransformer", "timm"))
def _swin_chain(model):
    # timm forward = head(norm(layers(patch_embed(x)))) (timm 1.0: forward_features + forward_head)
    return [("patch_embed", model.patch_embed)] + _expand("layers", model.layers) + \
        [("norm", model.norm), ("head", model.head)]


def layer_chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The sequential chain ``[(name, module), ...]`` whose composition is ``model.forward``."""
    fn = getattr(model, "pipeline_layers", None)
    if callable(fn):
        return [(str(n), m) for n, m in fn()]
    for match, adapter in _ADAPTERS:
        if match(model):
            return adapter(model)
    if isinstance(model, nn.Sequential):
        return _expand("", model)
    raise ConfigError(KEY, f"cannot split a {type(model).__name__} into pipeline stages: it is not an "
                      "nn.Sequential and defines no pipeline_layers() -> [(name, module), ...] chain")


def weight_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Weight layers (Linear / Conv2d / analog layers) inside ``module`` (itself included), outermost only."""
    from analogtrain.nn.layers import AnalogLayer

    out, skip = [], []
    for name, m in module.named_modules():
        if any(name.startswith(p + ".") for p in skip):
            continue
        if isinstance(m, (AnalogLayer, nn.Linear, nn.Conv2d)):
            out.append((name, m))
            skip.append(name)
    return out


@dataclass
class Stage:
    """Stage ``index`` of the pipeline: ``modules`` applied in order (``names`` = their chain names).

    ``params``: every trainable parameter of the stage (analog tiles' ``analog_ctx`` included) — the
    optimizer is restricted to these when the stage updates."""

    index: int
    names: list[str]
    modules: list[nn.Module]
    params: list[torch.nn.Parameter] = field(default_factory=list)

    def __post_init__(self):
        seen, params = set(), []
        for m in self.modules:
            for p in m.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        self.params = params
        self.param_ids = seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.modules:
            x = m(x)
        return x

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        out = []
        for name, m in zip(self.names, self.modules):
            out += [(f"{name}.{n}" if n else name, w) for n, w in weight_layers(m)]
        return out

    def buffers(self) -> list[torch.Tensor]:
        seen, out = set(), []
        for m in self.modules:
            for b in m.buffers():
                if id(b) not in seen:
                    seen.add(id(b))
                    out.append(b)
        return out


def _partition(weights: list[int], n: int) -> list[int]:
    """Cut points of ``weights`` into ``n`` contiguous non-empty groups minimising the largest group sum
    (ties: the earliest cuts). Returns the start index of each group."""
    m = len(weights)
    pre = [0]
    for w in weights:
        pre.append(pre[-1] + w)
    INF = float("inf")
    # best[k][i]: minimal max-sum splitting weights[:i] into k groups; arg[k][i]: start of the last group
    best = [[INF] * (m + 1) for _ in range(n + 1)]
    arg = [[0] * (m + 1) for _ in range(n + 1)]
    best[0][0] = 0
    for k in range(1, n + 1):
        for i in range(k, m + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], pre[i] - pre[j])
                if v < best[k][i]:
                    best[k][i], arg[k][i] = v, j
    starts, i = [], m
    for k in range(n, 0, -1):
        j = arg[k][i]
        starts.append(j)
        i = j
    return starts[::-1]


def split_stages(model: nn.Module, stages) -> list[Stage]:
    """Split ``model`` per ``trainer.pipeline.stages`` (an int or a list of layer-name groups).

    Int S: the chain elements that hold weight layers are cut into S contiguous groups with the largest
    group's weight-layer count minimal; parameter-free elements (activations, pooling, flatten) join the
    group of the element before them (leading ones the first group). Raises ``ConfigError`` naming
    ``trainer.pipeline.stages`` for impossible splits / unknown or misordered names."""
    chain = layer_chain(model)
    names = [n for n, _ in chain]
    wcount = [len(weight_layers(m)) for _, m in chain]
    has_params = [any(p.requires_grad for p in m.parameters()) for _, m in chain]
    if isinstance(stages, bool):
        raise ConfigError(KEY, f"{stages!r} is not allowed")
    if hasattr(stages, "__len__") and not isinstance(stages, (str, int)):
        groups = _named_groups(names, has_params, stages)
    else:
        S = int(stages)
        heavy = [i for i, w in enumerate(wcount) if w > 0]
        if S < 1 or S > len(heavy):
            raise ConfigError(KEY, f"{S} is out of range: this model's chain has {len(heavy)} elements with weight "
                              f"layers ({', '.join(names[i] for i in heavy)}), so 1 <= stages <= {len(heavy)}")
        cuts = _partition([wcount[i] for i in heavy], S)
        starts = [0] + [heavy[c] for c in cuts[1:]]
        groups = [list(range(a, b)) for a, b in zip(starts, starts[1:] + [len(chain)])]
    out = [Stage(k, [names[i] for i in g], [chain[i][1] for i in g]) for k, g in enumerate(groups)]
    _check_disjoint(model, out)
    return out


def _named_groups(names: list[str], has_params: list[bool], groups) -> list[list[int]]:
    pos = {n: i for i, n in enumerate(names)}
    idx_groups = []
    for g in groups:
        g = [g] if isinstance(g, str) else list(g)
        if not g:
            raise ConfigError(KEY, "a layer-name group is empty")
        idx = []
        for n in g:
            if n not in pos:
                raise ConfigError(KEY, f"'{n}' is not a layer of the model's chain; choose from {', '.join(names)}")
            idx.append(pos[n])
        idx_groups.append(sorted(idx))
    flat = [i for g in idx_groups for i in g]
    if len(set(flat)) != len(flat):
        raise ConfigError(KEY, "a layer appears in more than one group")
    if flat != sorted(flat) or any(g[-1] - g[0] + 1 != len(g) and not _gaps_free(g, has_params) for g in idx_groups):
        raise ConfigError(KEY, "groups must be contiguous runs of the chain, in chain order "
                          f"(chain: {', '.join(names)})")
    # fill: unlisted elements join the group of the element before them (leading ones the first group)
    owner = [None] * len(names)
    for k, g in enumerate(idx_groups):
        for i in g:
            owner[i] = k
    for i in range(len(names)):
        if owner[i] is None:
            if has_params[i]:
                raise ConfigError(KEY, f"layer '{names[i]}' has parameters but is in no group; list it in a group")
            owner[i] = owner[i - 1] if i > 0 else 0
    if any(owner[i] > owner[i + 1] for i in range(len(names) - 1)):
        raise ConfigError(KEY, f"groups must follow the chain order ({', '.join(names)})")
    return [[i for i in range(len(names)) if owner[i] == k] for k in range(len(idx_groups))]


def _gaps_free(g: list[int], has_params: list[bool]) -> bool:
    """A group may skip parameter-free elements (they are filled in)."""
    return all(not has_params[i] for i in range(g[0], g[-1] + 1) if i not in g)


def _check_disjoint(model: nn.Module, stages: list[Stage]) -> None:
    owner = {}
    for st in stages:
        for p in st.params:
            if id(p) in owner and owner[id(p)] != st.index:
                raise ConfigError(KEY, f"a parameter is shared by stages {owner[id(p)]} and {st.index}; "
                                  "shared weights cannot be pipelined")
            owner[id(p)] = st.index
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in owner]
    if missing:
        raise ConfigError(KEY, f"parameters outside the layer chain would never be trained: {', '.join(missing[:5])}")
