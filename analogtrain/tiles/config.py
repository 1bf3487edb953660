"""Schemas of the tile periphery: forward/backward IO, pulsed update, and the tile node itself.

Names and defaults follow aihwkit's ``IOParameters`` / ``UpdateParameters`` (Python defaults; see
``shared/reference/aihwkit-semantics.md`` §1.3 and §4.1). These dataclasses are the structured-config
schema of the ``tile:`` node of ``conf/train.yaml``; ``validate_*`` check ranges and name the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from analogtrain.config.errors import ConfigError

NOISE_MANAGEMENT = ("none", "abs_max", "max", "constant")
BOUND_MANAGEMENT = ("none", "iterative")
W_NOISE_TYPES = ("none", "additive_constant", "pcm_read")
PULSE_TYPES = ("stochastic_compressed", "mean_count", "deterministic_implicit", "none", "none_with_device")
UPDATE_MODES = ("pulsed", "mean_count", "expected", "aggregated")
BACKENDS = ("auto", "compiled", "reference")


@dataclass
class IOConfig:
    """Analog MVM periphery of one direction (forward or backward), aihwkit ``IOParameters``.

    Resolutions are *relative to the full range*: DAC bin = inp_res * 2 * inp_bound (1/63 by default),
    ADC bin = out_res * 2 * out_bound (24/510). Order per pass: noise -> quantise -> clip.
    """

    is_perfect: bool = False  # exact y = out_scale * W x (no DAC/ADC/noise/bounds)
    inp_bound: float = 1.0  # DAC range ±inp_bound (normalised input units; must be 1 with NM on)
    inp_res: float = 1.0 / 126  # DAC bin width relative to 2*inp_bound (<= 0: no quantisation)
    inp_sto_round: bool = False  # stochastic rounding in the DAC
    inp_noise: float = 0.0  # Gaussian input noise std (normalised units), after DAC and clip
    out_bound: float = 12.0  # ADC range ±out_bound (<= 0: unbounded)
    out_noise: float = 0.06  # Gaussian output noise std before the ADC (normalised units)
    out_res: float = 1.0 / 510  # ADC bin width relative to 2*out_bound (<= 0: no quantisation)
    out_sto_round: bool = False
    out_scale: float = 1.0
    noise_management: str = "abs_max"  # none | abs_max | max | constant (input scaling per sample)
    nm_thres: float = 0.0  # cap of abs_max NM (or the constant of 'constant')
    bound_management: str = "iterative"  # none | iterative (forward only; backward forces none)
    max_bm_factor: float = 1000.0  # iterative BM stops when red > max_bm_factor ...
    max_bm_res: float = 0.25  # ... or red > max_bm_res / inp_bin
    bm_test_negative_bound: bool = True
    w_noise: float = 0.0  # weight (read) noise std
    w_noise_type: str = "none"  # none | additive_constant | pcm_read
    inp_asymmetry: float = 0.0  # negative inputs scaled by (1 - a)
    out_asymmetry: float = 0.0  # negative outputs scaled by (1 - a)


@dataclass
class UpdateConfig:
    """Pulsed outer-product update, aihwkit ``UpdateParameters`` (semantics §1)."""

    desired_bl: int = 31  # pulse-train length BL (max BL under UBLM)
    fixed_bl: bool = True
    pulse_type: str = "stochastic_compressed"  # see PULSE_TYPES
    update_bl_management: bool = True  # UBLM: BL = min(ceil(k), desired_bl) per sample
    update_management: bool = True  # UM: balance x and d probabilities per sample
    um_grad_scale: float = 1.0
    res: float = 0.0  # bin width of the pulse probability (<= 0: off)
    sto_round: bool = False  # stochastic rounding of that discretisation


@dataclass
class TileConfig:
    """The ``tile:`` node: periphery, update, mapping and which implementation runs the update."""

    backend: str = "auto"  # auto | compiled | reference (compiled C++/CUDA kernel or the torch oracle)
    # pulsed | mean_count | expected (the theory papers' dynamic model) | aggregated (pulsed counts, but
    # each element's exact mean/variance carried through its pulses, one Gaussian draw; linear-step devices)
    update_mode: str = "pulsed"
    forward: IOConfig = field(default_factory=IOConfig)
    backward: IOConfig = field(default_factory=IOConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    max_input_size: int = 512  # split layers into tiles of at most this many inputs (0: never)
    max_output_size: int = 512  # ... and outputs
    digital_bias: bool = True  # bias as a digital parameter (False: extra analog input column)
    analog_bias_perfect: bool = False  # aihwkit perfect_bias: the analog bias column's devices sampled ideal
    #   (scales dw_min, bounds ×100, the family's response on them); read through the periphery as any column
    # aihwkit weight remapping (``MappingParameter.weight_scaling_omega``): 0 = off. When > 0,
    # ``AnalogTile.set_weights(W)`` stores a fixed digital output scale α = max|W| / omega (per output
    # row when ``weight_scaling_columnwise``) and programs W/α, so the largest weight sits at ±omega
    # device units; reads multiply by α, the pulsed update sees d/α (effective step −lr·d·xᵀ).
    weight_scaling_omega: float = 0.0
    weight_scaling_columnwise: bool = False  # α per output row (aihwkit "columnwise" = per column of
    # its (in, out)-ordered mapping, i.e. per output) instead of one scalar per tile


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"'{value}' is not allowed; choose one of {', '.join(allowed)}")


def _check_range(key: str, value: float, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        lo_s = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
        hi_s = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
        raise ConfigError(key, f"{value} is out of range: allowed {lo_s}{key.split('.')[-1]}{hi_s}")


def validate_io(cfg, prefix: str) -> None:
    """Range checks of one ``IOConfig`` (``cfg`` may be a DictConfig or the dataclass)."""
    _check_choice(f"{prefix}.noise_management", cfg.noise_management, NOISE_MANAGEMENT)
    _check_choice(f"{prefix}.bound_management", cfg.bound_management, BOUND_MANAGEMENT)
    _check_choice(f"{prefix}.w_noise_type", cfg.w_noise_type, W_NOISE_TYPES)
    for name in ("inp_noise", "out_noise", "w_noise", "nm_thres"):
        _check_range(f"{prefix}.{name}", getattr(cfg, name), lo=0.0)
    _check_range(f"{prefix}.inp_bound", cfg.inp_bound, lo=0.0, lo_open=True)
    _check_range(f"{prefix}.inp_asymmetry", cfg.inp_asymmetry, lo=-1.0, hi=1.0)
    _check_range(f"{prefix}.out_asymmetry", cfg.out_asymmetry, lo=-1.0, hi=1.0)
    _check_range(f"{prefix}.max_bm_factor", cfg.max_bm_factor, lo=1.0)
    if cfg.noise_management != "none" and cfg.inp_bound != 1.0 and not cfg.is_perfect:
        raise ConfigError(f"{prefix}.inp_bound", "must be 1.0 when noise_management is on")


def validate_update(cfg, prefix: str) -> None:
    _check_range(f"{prefix}.desired_bl", cfg.desired_bl, lo=1)
    _check_choice(f"{prefix}.pulse_type", cfg.pulse_type, PULSE_TYPES)
    _check_range(f"{prefix}.um_grad_scale", cfg.um_grad_scale, lo=0.0, lo_open=True)
    _check_range(f"{prefix}.res", cfg.res, hi=1.0)


def validate_tile(cfg, prefix: str = "tile") -> None:
    """Validate the whole ``tile:`` node; raises ``ConfigError`` naming the first bad key.

    ``cfg`` may be a DictConfig/dict: it is converted first (on a DictConfig, ``cfg.update`` would be
    the Mapping method, not the ``update`` node)."""
    if not isinstance(cfg, TileConfig):
        cfg = to_dataclass(TileConfig, cfg)
    _check_choice(f"{prefix}.backend", cfg.backend, BACKENDS)
    _check_choice(f"{prefix}.update_mode", cfg.update_mode, UPDATE_MODES)
    validate_io(cfg.forward, f"{prefix}.forward")
    validate_io(cfg.backward, f"{prefix}.backward")
    validate_update(cfg.update, f"{prefix}.update")
    _check_range(f"{prefix}.max_input_size", cfg.max_input_size, lo=0)
    _check_range(f"{prefix}.max_output_size", cfg.max_output_size, lo=0)
    _check_range(f"{prefix}.weight_scaling_omega", cfg.weight_scaling_omega, lo=0.0)


def to_dataclass(cls, node):
    """Build dataclass ``cls`` from a DictConfig/dict/dataclass node (nested dataclasses included)."""
    if isinstance(node, cls):
        return node
    kwargs = {}
    for f in fields(cls):
        if f.name not in node:
            continue
        v = node[f.name]
        sub = {"forward": IOConfig, "backward": IOConfig, "update": UpdateConfig}.get(f.name)
        kwargs[f.name] = to_dataclass(sub, v) if sub is not None and cls is TileConfig else v
    return cls(**kwargs)
