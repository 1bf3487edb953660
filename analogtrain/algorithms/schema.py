"""Schemas of the ``algo`` config group; each algorithm module adds its dataclass here."""

from dataclasses import dataclass


@dataclass
class DigitalConfig:
    """``algo=digital``: floating-point SGD baseline."""

    name: str = "digital"
    momentum: float = 0.0  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty


def register_configs(cs) -> None:
    cs.store(group="algo", name="digital_schema", node=DigitalConfig)


# ---------------------------------------------------------------------------------------------------
# Tiki-Taka family (owner: algorithms engineer). Semantics: shared/reference/aihwkit-semantics.md §3.
# Every field: meaning, range, aihwkit name (same unless noted), default = aihwkit's *Python* default.
# Units: "vector updates" = samples (image patches for convolutions), aihwkit's counting unit.
# ---------------------------------------------------------------------------------------------------

from dataclasses import field  # noqa: E402
from typing import Any, Optional  # noqa: E402

from analogtrain.tiles.config import IOConfig, UpdateConfig  # noqa: E402


def _transfer_io() -> IOConfig:
    """aihwkit ``transfer_forward = IOParameters()``; noise and bound management are forced off for
    transfer reads by aihwkit's C++ (one-hot inputs), so they default to ``none`` here."""
    return IOConfig(noise_management="none", bound_management="none")


def _single_pulse_update() -> UpdateConfig:
    """TTv2/c-TTv2/AGAD ``transfer_update``: BL = 1, no UBLM/UM -> one pulse per non-zero buffer step."""
    return UpdateConfig(desired_bl=1, update_bl_management=False, update_management=False)


@dataclass
class TTConfig:
    """``algo=tt``: Tiki-Taka v1, aihwkit ``TransferCompound`` (Gokmen & Haensch 2020), semantics §3.2.

    Two arrays: A (fast, gets the gradient pulses) and C (slow, holds the weight). Every
    ``transfer_every`` vector updates, ``n_reads_per_transfer`` consecutive columns of A are read through
    the transfer periphery and written onto C by a stochastic pulsed update: ``C[:, j] += lr_t·A[:, j]``.
    """

    name: str = "tt"
    # W = gamma·A + C (gamma = 0: "fully hidden", the tile weight is C). Range >= 0. aihwkit ``gamma``.
    gamma: float = 0.0
    # Transfer period. Vector updates (samples); x current mini-batch size if units_in_mbatch
    # (every = ceil(transfer_every·m)), else every = round(transfer_every), halves up as aihwkit's roundf
    # (a value rounding to 0 is refused). 0 disables transfers. >= 0.
    transfer_every: float = 1.0
    # Count transfer_every in mini-batches (True, aihwkit Python default) or in samples (False).
    units_in_mbatch: bool = True
    # Consecutive columns (rows) read and written per transfer, >= 1.
    n_reads_per_transfer: int = 1
    # True: read columns of A (forward pass, one-hot input e_j); False: rows (backward pass).
    transfer_columns: bool = True
    # Probability per read column to reset the read columns of A after the transfer (each device to the
    # device reset value, devices/base.py reset keys), in [0, 1]; columns only (transfer_columns=true).
    with_reset_prob: float = 0.0
    # Start each transfer at a random column instead of the next sequential one.
    random_selection: bool = False
    # Pulse-count lr of A: fast_lr·lr (scale_fast_lr), fast_lr (not scaled), lr if fast_lr <= 0.
    fast_lr: float = 1.0
    # Learning rate of the C write: transfer_lr·lr (scale_transfer_lr) or transfer_lr. > 0.
    transfer_lr: float = 1.0
    scale_fast_lr: bool = True  # multiply fast_lr by the optimizer (SGD) lr
    scale_transfer_lr: bool = True  # multiply transfer_lr by the optimizer (SGD) lr
    # Periphery of the transfer reads (one-hot inputs: read noise + ADC matter; NM/BM forced off).
    transfer_forward: IOConfig = field(default_factory=_transfer_io)
    # Pulsed update of the C write (aihwkit default UpdateParameters(): BL 31, UBLM, UM).
    transfer_update: UpdateConfig = field(default_factory=UpdateConfig)
    # Device of A / of C as overrides merged over the main ``device`` node (None: same device).
    # A dict naming another ``family`` replaces the main device instead of being merged. (analogtrain)
    fast_device: Optional[Any] = None
    device_c: Optional[Any] = None
    # Zero-shift A: a digital reference array R = symmetry point of A + N(reference_mean,
    # reference_std) is subtracted from every read of A (and from A in W = gamma·(A − R) + C); A starts
    # at its symmetry point. aihwkit does this inside SoftBoundsReference devices
    # (``subtract_symmetry_point``, ``reference_mean``, ``reference_std``); here it works for any device.
    subtract_symmetry_point: bool = False
    reference_mean: float = 0.0  # mean offset of R from A's symmetry point (weight units), paper μ_r
    reference_std: float = 0.0  # device-to-device std of that offset (weight units), paper σ_r, >= 0


@dataclass
class TTv2Config(TTConfig):
    """``algo=ttv2``: aihwkit ``BufferedTransferCompound`` (Gokmen 2021), semantics §3.3.

    Reads of A are accumulated in a digital buffer ``H += y·|lr_t|`` (weight units); when
    ``|H| >= thres_scale·dw_C`` one pulse per threshold step (at most BL_t) is written onto C.
    (aihwkit's *TTv2 presets* are c-TTv2 with chopper probability 0: see ``conf/algo/ttv2_*.yaml``.)
    """

    name: str = "ttv2"
    thres_scale: float = 1.0  # buffer threshold in units of C's granularity dw_C, > 0
    step: float = 1.0  # write lr = step·dw_C (size of one transfer pulse in dw_C units), > 0
    momentum: float = 0.1  # fraction of H kept after a write (forget) / not subtracted, in [0, 1)
    forget_buffer: bool = True  # True: H ← momentum·H where written; False: H −= (1−momentum)·n·thr
    transfer_update: UpdateConfig = field(default_factory=_single_pulse_update)


@dataclass
class ChoppedTTv2Config(TTConfig):
    """``algo=cttv2``: chopped TTv2, aihwkit ``ChoppedTransferCompound`` (Rasch et al. 2023), §3.4.

    A accumulates the *chopped* gradient (coincidence signs × c_in[j]·c_out[i]); the read of column j is
    multiplied by the chopper signs and accumulated in a dimensionless buffer ``H += c·v·lr_t/bg``
    with threshold 1; the in-chopper of a column may flip after its read, out-choppers after a sweep.
    """

    name: str = "cttv2"
    units_in_mbatch: bool = False  # transfer_every = 1.0 means one column read per sample
    # < 0: "auto": every = round(n_states(A)/n_columns·|transfer_every|) vector updates (min 1).
    transfer_every: float = 1.0
    in_chop_prob: float = 0.1  # flip probability (random) or 1/period in sweeps (regular), [0, 1]
    in_chop_random: bool = True  # random flips; False: regular, every N = max(ceil(1/p), 2) sweeps
    out_chop_prob: float = 0.0  # flip probability of each output chopper once per sweep, [0, 1]
    buffer_granularity: float = 1.0  # bg base (in dw_A units); <= 0 treated as 1
    # > 0: bg ×= auto_granularity/(n_columns·|transfer_every|), i.e. "auto_granularity reads per state"
    auto_granularity: float = 0.0
    step: float = 1.0  # write lr = step·dw_C, > 0
    momentum: float = 0.0  # H kept after a write (forget) / not subtracted, in [0, 1)
    forget_buffer: bool = True
    no_buffer: bool = False  # True: H is reset before every accumulation (TTv1-like transfer)
    # Adaptive fast lr: lr_A = fast_lr·desired_BL·dw_A/(m_x·m_d), m_x/m_d = EMAs of max|x|, max|d|
    auto_scale: bool = False
    auto_momentum: float = 0.99  # EMA momentum of m_x, m_d (per sample τ = (1−auto_momentum)/m), [0,1)
    # bg ← bg·dw_C/dw_A and lr_scale = |lr_t|/lr_A/bg (aihwkit ``correct_gradient_magnitudes``)
    correct_gradient_magnitudes: bool = False
    scale_fast_lr: bool = False  # fast lr is absolute by default for the chopped family
    transfer_update: UpdateConfig = field(default_factory=_single_pulse_update)


@dataclass
class AGADConfig(ChoppedTTv2Config):
    """``algo=agad``: AGAD, aihwkit ``DynamicTransferCompound`` (Rasch et al. 2023), §3.5.

    Like c-TTv2, but the reference is digital and dynamic: ``Δ = (v − P)·c`` where P is the
    tail-weighted running mean M of the reads of the previous chopper half-period (P ← M after a switch,
    M ← (1−β)M + βv with β = min(tail_weightening/N, 1)); C is written only after a warm-up of N sweeps.
    """

    name: str = "agad"
    in_chop_random: bool = False  # regular chopper by default
    tail_weightening: float = 5.0  # β·N: weight of the tail of the running mean, > 0
    buffer_cap: float = 0.0  # with forget_buffer False: |H| <= buffer_cap·BL_t (0: no cap), >= 0
    # lr_scale /= min(s, 1/dw_A), s = read number inside the chopper period (aihwkit experimental)
    experimental_correct_accumulation: bool = False


def register_transfer_configs(cs) -> None:
    """Store the TT-family schemas as ``<name>_schema`` nodes of the ``algo`` group."""
    cs.store(group="algo", name="tt_schema", node=TTConfig)
    cs.store(group="algo", name="ttv2_schema", node=TTv2Config)
    cs.store(group="algo", name="cttv2_schema", node=ChoppedTTv2Config)
    cs.store(group="algo", name="agad_schema", node=AGADConfig)


_register_configs_base = register_configs


def register_configs(cs) -> None:  # noqa: F811  (extends the function above, append-only file)
    _register_configs_base(cs)
    register_transfer_configs(cs)


# ---------------------------------------------------------------------------------------------------
# algo=sgd (owner: tile/IO engineer). Semantics: shared/reference/aihwkit-semantics.md §3.1.
# ---------------------------------------------------------------------------------------------------


@dataclass
class SGDConfig:
    """``algo=sgd``: plain analog SGD, aihwkit ``SingleRPUConfig`` + ``AnalogSGD`` (§3.1).

    Each mini-batch: forward/backward through the IO periphery (``tile.forward``/``tile.backward``),
    then the pulsed update of every sample on the weight array with lr = the SGD lr of the tile's param
    group; pulse settings in ``tile.update`` / ``tile.update_mode``. Device from the ``device`` group.
    """

    name: str = "sgd"
    # SGD momentum of the *digital* parameters only (digital biases, norms, layers kept digital), [0, 1).
    # Analog tiles have no momentum (aihwkit AnalogSGD). analogtrain name.
    digital_momentum: float = 0.0
    # L2 weight decay of the digital parameters, >= 0. analogtrain name.
    digital_weight_decay: float = 0.0


_register_configs_before_sgd = register_configs


def register_configs(cs) -> None:  # noqa: F811  (extends the function above, append-only file)
    _register_configs_before_sgd(cs)
    cs.store(group="algo", name="sgd_schema", node=SGDConfig)
