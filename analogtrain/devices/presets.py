"""Device presets from the literature with aihwkit's values (``aihwkit-semantics.md`` §5.2).

Each preset is a subclass of its family's config with different defaults; every field stays
overridable (``device=reram_sb device.dw_min=0.001``). Left out: aihwkit's ``PCMPresetDevice`` (it is
only meaningful inside the one-sided ``PCMPresetUnitCell`` pair, which analogtrain does not model).
"""

from __future__ import annotations

from dataclasses import dataclass

from analogtrain.devices.constant_step import ConstantStepConfig
from analogtrain.devices.expstep import ExpStepConfig
from analogtrain.devices.linear_step import LinearStepConfig
from analogtrain.devices.softbounds import SoftBoundsReferenceConfig


@dataclass
class ReRamESConfig(ExpStepConfig):
    """``reram_es``: aihwkit ReRamESPresetDevice — ExpStep fit to Gong et al., Nat. Commun. 2018.
    Nominal granularity ≈ 0.00199 (≈ 1004 states); write noise 75·dw_min = 0.101."""

    name: str = "reram_es"
    dw_min: float = 0.00135
    up_down: float = 0.259359
    w_max: float = 1.0
    w_min: float = -1.0
    a: float = -0.5
    b: float = -0.5
    gamma_up: float = 5.0
    gamma_down: float = 5.0
    A_up: float = -1.18445
    A_down: float = -0.081404
    dw_min_dtod: float = 0.2
    up_down_dtod: float = 0.05
    w_max_dtod: float = 0.3
    w_min_dtod: float = 0.3
    dw_min_std: float = 5.0
    write_noise_std: float = 75.0


@dataclass
class ReRamSBConfig(SoftBoundsReferenceConfig):
    """``reram_sb``: aihwkit ReRamSBPresetDevice — SoftBoundsReference, loose fit to Gong et al. 2018.
    ``subtract_symmetry_point=True`` as aihwkit's compound training presets (TikiTaka/TTv2/ChoppedTTv2/
    AGAD ReRamSB) set it (visible symmetry point at 0, and ``skew`` puts it exactly there). aihwkit's
    single-device ``ReRamSBPreset`` (analog SGD) keeps the device class's False: for that baseline set
    ``device.subtract_symmetry_point=false`` (random visible symmetry points, std ≈ 0.018 here).
    1000 states; write noise 56·dw_min = 0.112; additive c2c noise."""

    name: str = "reram_sb"
    dw_min: float = 0.002
    up_down: float = 0.0
    w_max: float = 1.25
    w_min: float = -0.75
    mult_noise: bool = False
    dw_min_dtod: float = 0.3
    up_down_dtod: float = 0.01
    w_max_dtod: float = 0.24  # = 0.3/1.25
    w_min_dtod: float = 0.4  # = 0.3/0.75
    dw_min_std: float = 3.75
    write_noise_std: float = 56.0
    subtract_symmetry_point: bool = True


@dataclass
class CapacitorConfig(LinearStepConfig):
    """``capacitor``: aihwkit CapacitorPresetDevice — LinearStep fit to Li et al., VLSI 2018, with
    leakage (lifetime 1e6 mini-batches). 400 states."""

    name: str = "capacitor"
    dw_min: float = 0.005
    up_down: float = 0.0
    w_max: float = 1.0
    w_min: float = -1.0
    mult_noise: bool = False
    gamma_up: float = 0.05
    gamma_down: float = 0.05
    dw_min_dtod: float = 0.1
    up_down_dtod: float = 0.06
    w_max_dtod: float = 0.07
    w_min_dtod: float = 0.07
    gamma_up_dtod: float = 0.01
    gamma_down_dtod: float = 0.01
    dw_min_std: float = 0.3
    mean_bound_reference: bool = True
    lifetime: float = 1.0e6
    lifetime_dtod: float = 0.3


@dataclass
class EcRamConfig(LinearStepConfig):
    """``ecram``: aihwkit EcRamPresetDevice — LinearStep fit to Li-ECRAM (Tang et al., IEDM 2018),
    range shifted so that the symmetry point is at 0. 1000 states."""

    name: str = "ecram"
    dw_min: float = 0.002
    up_down: float = 0.0
    w_max: float = 1.1724
    w_min: float = -0.8276
    mult_noise: bool = True
    gamma_up: float = 0.1153
    gamma_down: float = 0.5085
    dw_min_dtod: float = 0.1
    up_down_dtod: float = 0.01
    w_max_dtod: float = 0.05
    w_min_dtod: float = 0.05
    gamma_up_dtod: float = 0.05
    gamma_down_dtod: float = 0.05
    dw_min_std: float = 0.3
    mean_bound_reference: bool = True


@dataclass
class EcRamMOConfig(LinearStepConfig):
    """``ecram_mo``: aihwkit EcRamMOPresetDevice — metal-oxide ECRAM (Kim et al., IEDM 2019),
    ≈ 7090 states."""

    name: str = "ecram_mo"
    dw_min: float = 2.8214e-4
    up_down: float = 0.0
    w_max: float = 1.1714
    w_min: float = -0.8286
    mult_noise: bool = True
    gamma_up: float = 0.4152
    gamma_down: float = 0.7342
    dw_min_dtod: float = 0.1
    up_down_dtod: float = 0.01
    w_max_dtod: float = 0.05
    w_min_dtod: float = 0.05
    gamma_up_dtod: float = 0.05
    gamma_down_dtod: float = 0.05
    dw_min_std: float = 2.0
    mean_bound_reference: bool = True


@dataclass
class IdealizedConfig(ConstantStepConfig):
    """``idealized``: aihwkit IdealizedPresetDevice — Gokmen & Vlasov 2016 specs with zero d2d
    asymmetry and 10000 states."""

    name: str = "idealized"
    dw_min: float = 0.0002
    dw_min_dtod: float = 0.3
    dw_min_std: float = 0.3
    up_down: float = 0.0
    up_down_dtod: float = 0.0
    w_max: float = 1.0
    w_min: float = -1.0
    w_max_dtod: float = 0.3
    w_min_dtod: float = 0.3


@dataclass
class GokmenVlasovConfig(ConstantStepConfig):
    """``gokmen_vlasov``: aihwkit GokmenVlasovPresetDevice — RPU specs of Gokmen & Vlasov,
    Front. Neurosci. 2016, scaled to ±1 (1250 states)."""

    name: str = "gokmen_vlasov"
    dw_min: float = 0.0016
    dw_min_dtod: float = 0.3
    dw_min_std: float = 0.3
    up_down: float = 0.0
    up_down_dtod: float = 0.01
    w_max: float = 1.0
    w_min: float = -1.0
    w_max_dtod: float = 0.3
    w_min_dtod: float = 0.3


@dataclass
class ReRamArrayOMConfig(SoftBoundsReferenceConfig):
    """``reram_array_om``: aihwkit ReRamArrayOMPresetDevice — OM ReRAM array fit (≈ 21 states,
    log-normal step spread, reference std 0.05, symmetry point subtracted)."""

    name: str = "reram_array_om"
    dw_min: float = 0.0949
    up_down: float = 0.0
    w_max: float = 1.0
    w_min: float = -1.0
    dw_min_dtod: float = 0.7829
    dw_min_dtod_log_normal: bool = True
    up_down_dtod: float = 0.01
    w_max_dtod: float = 0.3499
    w_min_dtod: float = 0.5695
    dw_min_std: float = 0.4158
    write_noise_std: float = 1.4113
    subtract_symmetry_point: bool = True
    reference_std: float = 0.05
    corrupt_devices_prob: float = 0.0
    corrupt_devices_range: float = 0.01


@dataclass
class ReRamArrayHfO2Config(SoftBoundsReferenceConfig):
    """``reram_array_hfo2``: aihwkit ReRamArrayHfO2PresetDevice — HfO2 ReRAM array fit (≈ 4 states)."""

    name: str = "reram_array_hfo2"
    dw_min: float = 0.4622
    up_down: float = 0.0
    w_max: float = 1.0
    w_min: float = -1.0
    dw_min_dtod: float = 0.7125
    dw_min_dtod_log_normal: bool = True
    up_down_dtod: float = 0.01
    w_max_dtod: float = 0.4295
    w_min_dtod: float = 0.5990
    dw_min_std: float = 0.2174
    write_noise_std: float = 0.5841
    subtract_symmetry_point: bool = True
    reference_std: float = 0.05


@dataclass
class Rasch2024SBConfig(SoftBoundsReferenceConfig):
    """``rasch2024_sb``: the normalised soft-bounds device of Rasch et al., Nat. Commun. 15:7133 (2024)
    (paper-claims §1.2; aihwkit example 26): range ±1 with 30 % bound spread, 20 states (δ = 0.1),
    log-normal step spread 0.3, up/down spread 0.3, additive c2c noise 0.3, symmetry point subtracted.
    Sweep ``n_states`` and ``skew``/``skew_std`` (the paper's μ_r / σ_r) on top."""

    name: str = "rasch2024_sb"
    dw_min: float = 0.1
    up_down: float = 0.0
    w_max: float = 1.0
    w_min: float = -1.0
    w_max_dtod: float = 0.3
    w_min_dtod: float = 0.3
    dw_min_dtod: float = 0.3
    dw_min_dtod_log_normal: bool = True
    up_down_dtod: float = 0.3
    dw_min_std: float = 0.3
    mult_noise: bool = False
    subtract_symmetry_point: bool = True


PRESETS = {
    "reram_es": ReRamESConfig,
    "reram_sb": ReRamSBConfig,
    "capacitor": CapacitorConfig,
    "ecram": EcRamConfig,
    "ecram_mo": EcRamMOConfig,
    "idealized": IdealizedConfig,
    "gokmen_vlasov": GokmenVlasovConfig,
    "reram_array_om": ReRamArrayOMConfig,
    "reram_array_hfo2": ReRamArrayHfO2Config,
    "rasch2024_sb": Rasch2024SBConfig,
}
