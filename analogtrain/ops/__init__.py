"""Tile ops: the only package that knows a compiled extension exists.

Every op has a pure-torch twin ``*_ref`` in ``analogtrain.ops.reference`` with the same signature and
the same RNG contract (``analogtrain.ops.rng``). ``set_backend`` / ``tile.backend`` picks between the
compiled kernel (``csrc/``, JIT-built on first use) and the reference.

Contract of the pulsed update (all ops mutate state tensors in place and hold no hidden state)::

    pulsed_update(w, w_p, params, gparams, x, d, lr, dw, spec, seed, offset,
                  chop_in=None, chop_out=None) -> pulses

    w        (O, I) float32   visible weights, updated in place
    w_p      (O, I) float32 or None   persistent weights when write noise is on (else None)
    params   (NP, O, I) float32       sampled device parameters (``analogtrain.devices.params``)
    gparams  (NG,) float64            tile-wide device scalars
    x        (B, I) float32           inputs of the B samples (B = batch or image patches)
    d        (B, O) float32           errors (gradient of the loss w.r.t. the tile output)
    lr       float                    pulse-count learning rate (sign used; |lr| for probabilities)
    dw       float                    nominal granularity of the device (for BL/UM), not per-device
    spec     UpdateSpec               BL/UM/UBLM settings and the update mode
    seed     int                      the tile's pulse seed (64 bit)
    offset   int                      the tile's op-call counter (the caller advances it by 1 per call)
    chop_in  (I,) float32 ±1 or None  input chopper: sign of coincidences of column j multiplied by it
    chop_out (O,) float32 ±1 or None  output chopper: sign of coincidences of row i multiplied by it
    returns  (O, I) float32           number of pulses applied per element in this call (summed over
                                      samples; ``expected`` mode: the expected count)

Semantics: aihwkit's (``shared/reference/aihwkit-semantics.md`` §1): every sample is its own update
with its own BL and UM/UBLM scaling, in batch order; sign(x)·sign(d)·sign(lr) > 0 gives a *down* pulse.

Aggregated pulses (``spec.aggregate``, ``tile.update_mode: aggregated``; MODE_PULSED and KIND_LINEAR
devices only, else the op raises): trains, counts, signs and the pulse counts returned are those of
MODE_PULSED (same seed/offset, same counts), but instead of one device step per pulse every element
carries the exact mean and variance of its conductance through all its pulses of the call (the
per-pulse map is affine) and draws ONE normal at the end, clipped once (float32 recipe:
``devices.step.aggregate_moments`` / ``aggregate_finish``; semantics: ``reference.py`` step 4a). The op
argument ``mode`` carries the flag as ``spec.mode | AGGREGATE_BIT`` (``_spec_args``).

Contract of the fused TT-family transfer of one slice (twin: ``reference_transfer.buffered_transfer_ref``)::

    buffered_transfer(h, v, k, *, lr_scale, thr, bl, momentum, forget, w, w_p, params, gparams, lr, dw,
                      spec, seed, offset, chop=None, columns=True, write=True, no_buffer=False, cap=0.0)
        -> (n, pulses)

    h        (O, I) float32   the digital buffer H, slice k updated in place
    v        (L,) float32     the read of slice k of A, already done in torch (noisy read, minus the
                              reference array; AGAD passes v − P). L = O for columns, I for rows
    k        int              the slice: column k (``columns``) or row k
    chop     (L,) float32 ±1 or None   chopper sign of every entry of the slice (c_in[k]·c_out)
    lr_scale float            H increment per unit of signal: TTv2 |lr_t|; c-TTv2/AGAD |lr_t|/bg
    thr      float            threshold: TTv2 thres_scale·dw_C (weight units); c-TTv2/AGAD 1.0
    bl       int              BL_t = transfer_update.desired_bl: |n| <= bl
    momentum, forget          forget: H ← momentum·H where n ≠ 0; else H ← H − (1 − momentum)·n·thr
    no_buffer bool            H is not kept: H_k = signal·lr_scale before thresholding
    cap      float            > 0: H clamped to ±cap·bl afterwards (AGAD buffer_cap without forget)
    w, w_p, params, gparams, lr, dw, spec, seed, offset
                              the C array and its write: if ``write`` and any n ≠ 0, one pulsed update
                              (contract above, one sample) with x = e_k, d = −n (columns) or x = −n,
                              d = e_k (rows), lr = step·dw_C. The caller advances C's offset by 1 per
                              call (whether or not it wrote).
    returns  n (L,) float32   n = clamp(trunc(H_k/thr), ±bl) (signed; what was asked of the write)
             pulses (L,) float32   pulses the write applied to slice k of C (zeros without a write)

Random grids for torch-side code: ``random_grid(seed, offset, stream, n_a, b_idx, draw, normal=True)``
returns ``rng.normal``/``rng.uniform`` on the grid a < n_a × b in b_idx, from the compiled kernel when
available (same numbers, ~50× faster than the int64 torch emulation of Philox): meant for IO noise.
The compiled CPU kernel also runs the element-wise steps of a read around its matrix product in two
fused ops, ``io_input`` and ``io_output_`` (when ``io_fused(device)``), whose twin is the torch code of
``analogtrain.tiles.periphery``.

Backends: ``set_backend("auto"|"compiled"|"reference")`` (``tile.backend``; default ``auto``) or the
``backend=`` argument of each op. ``auto`` uses the compiled kernel (``csrc/``, JIT-built on first use by
``analogtrain.ops.build``) when it builds and falls back to the reference with ONE warning otherwise;
``compiled`` raises ``BuildError`` when the kernel cannot be built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MODE_PULSED = 0  # stochastic compressed pulse trains (the faithful simulation)
MODE_MEAN_COUNT = 1  # deterministic counts n_ij = rint(c_d(i)/BL * c_x(j)) (aihwkit MeanCount)
MODE_EXPECTED = 2  # expected increment per sample: w += Δ·F(w) − |Δ|·G(w), noise-free, Δ = −lr·x·d
# Bit of the op's ``mode`` argument that asks for aggregated pulses (MODE_PULSED only): the pulses of an
# element in one call move the exact mean and variance of its conductance, ONE normal is drawn at the end
# (KIND_LINEAR devices; ``reference.py`` step 4a). The kernels split the code as ``mode & 3`` (the mode)
# and ``mode & AGGREGATE_BIT``.
AGGREGATE_BIT = 4


@dataclass(frozen=True)
class UpdateSpec:
    """Scalars of one pulsed-update call (from ``UpdateConfig`` plus the tile's update mode)."""

    desired_bl: int = 31
    fixed_bl: bool = True
    ublm: bool = True  # update_bl_management
    um: bool = True  # update_management (forced on when ublm is on, as in aihwkit)
    um_grad_scale: float = 1.0
    res: float = 0.0
    sto_round: bool = False
    mode: int = MODE_PULSED
    aggregate: bool = False  # aggregated pulses (``tile.update_mode: aggregated``); MODE_PULSED only


# --- dispatch: tile.backend = auto | compiled | reference ---------------------------------------------
import logging as _logging  # noqa: E402
import warnings as _warnings  # noqa: E402

BACKENDS = ("auto", "compiled", "reference")
_BACKEND = "auto"
_FAILED: dict[str, str] = {}  # device type -> reason the compiled kernel is unavailable (auto fell back)
_READY: set[str] = set()  # device types whose compiled kernel is loaded
_log = _logging.getLogger(__name__)


def set_backend(name: str) -> None:
    """Select the implementation of every op: ``auto`` (compiled when it builds, else the reference with
    one warning), ``compiled`` (fail loudly) or ``reference`` (pure torch). ConfigError on other names."""
    if name not in BACKENDS:
        from analogtrain.config.errors import ConfigError

        raise ConfigError("tile.backend", f"'{name}' is not allowed; choose one of {', '.join(BACKENDS)}")
    global _BACKEND
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def _compiled(device_type: str, backend: str) -> bool:
    """True when the compiled kernel serves ``device_type`` under ``backend`` (building it if needed)."""
    if backend == "reference":
        return False
    if backend not in BACKENDS:
        from analogtrain.config.errors import ConfigError

        raise ConfigError("tile.backend", f"'{backend}' is not allowed; choose one of {', '.join(BACKENDS)}")
    if device_type in _READY:
        return True
    if device_type in _FAILED:
        if backend == "compiled":
            from analogtrain.ops.build import BuildError

            raise BuildError(_FAILED[device_type])
        return False
    from analogtrain.ops import build

    try:
        if device_type == "cpu":
            build.build_cpu()
        elif device_type == "cuda":
            build.build_cuda()
        else:
            raise build.BuildError(f"no compiled kernel for device type '{device_type}'")
        _READY.add(device_type)
        return True
    except build.BuildError as e:
        if backend == "compiled":
            raise
        _FAILED[device_type] = str(e)
        msg = (f"analogtrain: compiled tile kernel unavailable for {device_type} ({e}); "
               "falling back to the pure-torch reference (slower). Set tile.backend=reference to silence.")
        _warnings.warn(msg, RuntimeWarning, stacklevel=3)
        _log.warning(msg)
        return False


def prepare_kernel(device_type: str = "cpu") -> str:
    """Build (or load from the cache) now the compiled kernel that will serve ``device_type`` under the
    selected backend (``set_backend``), instead of inside the first op call: a run calls this before
    its first training step, so that a first build (30 s or more) is neither a silent pause in the
    progress bar nor part of the first epoch's steps/s. Returns the implementation that will serve the
    ops: ``"compiled"``, or ``"reference"`` (backend ``reference``; or ``auto`` after a failed build,
    which has warned once). Raises ``BuildError`` under backend ``compiled`` when the build fails."""
    return "compiled" if _compiled(device_type, _BACKEND) else "reference"


def compiled_available(device_type: str = "cpu") -> bool:
    """Whether the compiled kernel builds/loads for ``device_type`` (never raises, never warns twice)."""
    try:
        return _compiled(device_type, "auto")
    except Exception:  # noqa: BLE001
        return False


def _i64(v: int) -> int:
    """A 64-bit unsigned counter/seed as the signed int the op schema takes (same bits)."""
    v = int(v) & 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= (1 << 63) else v


def _i64_counters(v) -> torch.Tensor:
    """``_i64`` of a sequence of counters as an int64 tensor (an int64 tensor passes through: its bits
    already are the counters')."""
    if isinstance(v, torch.Tensor) and v.dtype == torch.int64:
        return v.cpu()
    return torch.as_tensor([_i64(o) for o in v], dtype=torch.int64)


def _f32(t, device):
    return None if t is None else t.to(device=device, dtype=torch.float32).contiguous()


def _spec_args(spec: UpdateSpec):
    """The op's scalar arguments of ``spec`` (the ONE place the mode code is built): ``(desired_bl,
    fixed_bl, ublm, um, um_grad_scale, res, sto_round, mode_code)`` with ``mode_code = spec.mode``, or
    ``spec.mode | AGGREGATE_BIT`` when ``spec.aggregate`` (only with MODE_PULSED: ValueError otherwise)."""
    mode = int(spec.mode)
    if mode not in (MODE_PULSED, MODE_MEAN_COUNT, MODE_EXPECTED):
        raise ValueError(f"unknown update mode {spec.mode}")
    if getattr(spec, "aggregate", False):
        if mode != MODE_PULSED:
            raise ValueError(f"aggregate (aggregated pulses) needs mode MODE_PULSED, got mode {mode}")
        mode |= AGGREGATE_BIT
    return (int(spec.desired_bl), bool(spec.fixed_bl), bool(spec.ublm), bool(spec.um or spec.ublm),
            float(spec.um_grad_scale), float(spec.res), bool(spec.sto_round), mode)


def pulsed_update(w, w_p, params, gparams, x, d, lr, dw, spec, seed, offset, chop_in=None, chop_out=None,
                  backend: str | None = None):
    """The pulsed-update op (contract in the module docstring), run by ``backend`` (default: the one
    chosen by ``set_backend``)."""
    if _compiled(w.device.type, backend or _BACKEND):
        if not dw > 0:
            raise ValueError(f"dw must be > 0, got {dw}")
        dev = w.device
        return torch.ops.analogtrain.pulsed_update(
            w, w_p, params.to(dev, torch.float32).contiguous(), gparams, _f32(x, dev), _f32(d, dev), float(lr),
            float(dw), *_spec_args(spec), _i64(seed), _i64(offset), _f32(chop_in, dev), _f32(chop_out, dev))
    from analogtrain.ops.reference import pulsed_update_ref

    return pulsed_update_ref(w, w_p, params, gparams, x, d, lr, dw, spec, seed, offset,
                             chop_in=chop_in, chop_out=chop_out)


def buffered_transfer(h, v, k, *, lr_scale, thr, bl, momentum, forget, w, w_p, params, gparams, lr, dw, spec,
                      seed, offset, chop=None, columns=True, write=True, no_buffer=False, cap=0.0,
                      backend: str | None = None):
    """The fused TT-family transfer of slice ``k`` (contract in the module docstring); returns
    ``(n, pulses)``, both (L,) float32."""
    if _compiled(h.device.type, backend or _BACKEND):
        dev = h.device
        return torch.ops.analogtrain.buffered_transfer(
            h, _f32(v.reshape(-1), dev), int(k), _f32(None if chop is None else chop.reshape(-1), dev),
            float(lr_scale), float(thr), int(bl), float(momentum), bool(forget), bool(no_buffer), float(cap),
            bool(columns), bool(write), w, w_p, params.to(dev, torch.float32).contiguous(), gparams, float(lr),
            float(dw), *_spec_args(spec), _i64(seed), _i64(offset))
    from analogtrain.ops.reference_transfer import buffered_transfer_ref

    return buffered_transfer_ref(h, v, k, lr_scale=lr_scale, thr=thr, bl=bl, momentum=momentum, forget=forget,
                                 w=w, w_p=w_p, params=params, gparams=gparams, lr=lr, dw=dw, spec=spec, seed=seed,
                                 offset=offset, chop=chop, columns=columns, write=write, no_buffer=no_buffer, cap=cap)


def random_grid(seed: int, offset: int, stream: int, n_a: int, b_idx, draw: int, normal: bool = True,
                device=None, backend: str | None = None) -> torch.Tensor:
    """(len(b_idx), n_a) float32 Philox draws ``draw`` of the sequences ``(seed, offset, stream, a, b)``
    for a < n_a and b in ``b_idx`` — ``rng.normal`` / ``rng.uniform`` on the grid ``a × b``, the hot
    random numbers of the IO periphery (output/input/weight noise) and of transfer reads.

    The compiled CPU kernel returns the same numbers as the torch ``rng`` functions (uniforms exactly;
    normals up to a float ulp with probability ~1e-8: vectorised double libm) about 50× faster; other
    devices and the ``reference`` backend use ``rng``."""
    b_idx = torch.as_tensor(b_idx, dtype=torch.int64)
    dev = torch.device(device) if device is not None else b_idx.device
    if dev.type == "cpu" and _compiled("cpu", backend or _BACKEND):
        fn = torch.ops.analogtrain.philox_normal_grid if normal else torch.ops.analogtrain.philox_uniform_grid
        return fn(_i64(seed), _i64(offset), int(stream), int(n_a), b_idx.cpu(), int(draw))
    from analogtrain.ops import rng as _rng

    a = torch.arange(int(n_a), dtype=torch.int64, device=dev)[None, :]
    b = b_idx.to(dev)[:, None]
    f = _rng.normal if normal else _rng.uniform
    return f(int(seed), int(offset), int(stream), a, b, int(draw), device=dev)


def io_fused(device) -> bool:
    """Whether ``io_input`` / ``io_output_`` serve reads on ``device``: the compiled CPU kernel under the
    selected backend (CUDA tensors and the ``reference`` backend take the torch steps of
    ``tiles.periphery``, which are these ops' twin)."""
    return torch.device(device).type == "cpu" and _compiled("cpu", _BACKEND)


_IO_NM = {None: 0, "abs_max": 1, "max": 2}  # io_input's noise managements (the op's nm codes)


def io_input(x, s, *, nm: str | None = None, nm_thres: float = 0.0, bin: float, sto: bool, bound: float,
             noise: float, asym: float, seed: int, offset: int, stream: int, b_idx, round_draw: int,
             noise_draw: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input side of one analog read (compiled CPU kernel; twin: ``tiles.periphery``'s torch steps).

    x (n, I) float32 rows of the samples ``b_idx`` (n,) int64 -> (v (n, I) float32, α)::

        α = max_j |x_j| (nm "abs_max", capped at nm_thres when > 0) or max_j x_j (nm "max"), per row;
                                     nm None: α is None and s (n, 1) is the per-row input scale (or None)
        v = x·(1/α)  or  x·s  or  x
        v = rint(v/bin)·bin          DAC, half to even (sto: floor(v/bin + u)·bin, u = uniform draw
                                     ``round_draw``); bin <= 0: no quantiser
        v = clip(v, ±bound)
        v = v + noise·ξ              when noise > 0 (normal draw ``noise_draw``)
        v = v·(1 − asym) where v < 0 when asym ≠ 0

    α is (n, 1) float32 — or, with nm given, None when some row's α is not > 0 (zero or NaN: the
    general path of ``tiles.periphery`` handles such rows; v is then meaningless). Draws are those of
    ``random_grid(seed, offset, stream, I, b_idx, draw)``: column j, sample b_idx[q]. Every step is the
    float32 operation of the torch steps, in their order: the same bits."""
    v, alpha, n_bad = torch.ops.analogtrain.io_input(
        x, s, _IO_NM[nm], float(nm_thres), float(bin), bool(sto), float(bound), float(noise), float(asym),
        _i64(seed), _i64(offset), int(stream), b_idx, int(round_draw), int(noise_draw))
    return v, (None if nm is None or n_bad else alpha)


def io_output_(y, *, amp, asym: float, noise: float, bin: float, sto: bool, bound: float, test: int,
               scale: float, alpha, red, seed: int, offset: int, stream: int, b_idx, w_draw: int,
               noise_draw: int, round_draw: int) -> tuple[torch.Tensor, int]:
    """The output side of one analog read, in place on y (n, O) float32 contiguous (= v @ Mᵀ of the
    samples ``b_idx``; compiled CPU kernel, twin: ``tiles.periphery``'s torch steps)::

        y = y + amp·ξ_w              amp: weight-noise amplitude (n, 1) per row or (n, O) per output, or
                                     None (normal ``w_draw``)
        y = y·(1 − asym) where y < 0 when asym ≠ 0
        y = y + noise·ξ              when noise > 0 (normal ``noise_draw``)
        y = rint(y/bin)·bin          ADC, as ``io_input``'s DAC (uniform ``round_draw`` when sto)
        bound > 0: exceeded[q] = any(y > bound) (test 1) or any(|y| > bound) (test 2; test 0: all False),
                   y = clip(y, ±bound)
        y = y·scale (when ≠ 1), ·alpha[q], ·red[q]   alpha, red (n, 1) or None

    Returns ``(exceeded (n,) bool, number of rows exceeded)``; draws as ``io_input``'s (column i)."""
    return torch.ops.analogtrain.io_output_(
        y, amp, float(asym), float(noise), float(bin), bool(sto), float(bound), int(test), float(scale),
        alpha, red, _i64(seed), _i64(offset), int(stream), b_idx, int(w_draw), int(noise_draw),
        int(round_draw))


def uniform_scalar(seed: int, offset: int, stream: int, a: int, b: int, draw: int) -> float:
    """One ``rng.uniform`` draw for Python-int indices, computed with Python integers (no tensors):
    the same float32 value (returned as a Python float) ~50× faster than the torch emulation for a
    single number — for per-event scalar draws such as chopper flips."""
    import struct

    m = 0xFFFFFFFF
    k0, k1 = int(seed) & m, (int(seed) >> 32) & m
    c0, c1 = int(a) & m, ((int(stream) & 0xFF) << 24) | ((int(draw) >> 2) & 0xFFFFFF)
    c2, c3 = int(b) & m, int(offset) & m
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & m, p1 & m, ((p0 >> 32) ^ c3 ^ k1) & m, p0 & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    r = (c0, c1, c2, c3)[int(draw) & 3]
    # ((r >> 8) + 0.5)·2^-24 in float64, rounded to float32 (round-half-even, as torch's .to(float32))
    return struct.unpack("f", struct.pack("f", ((r >> 8) + 0.5) * 2.0**-24))[0]


def auto_scale_lrs_ref(xm, dm, mx: float, md: float, tau: float, num: float, base: float, lr: float,
                       scaled: bool) -> tuple[list[float], float, float]:
    """The auto-scaled fast lr of each sample of a chopped-transfer batch (aihwkit ``auto_scale``, §3.4):
    per sample b the EMAs of max|x| and max|d| move first (m ← new when m <= 0, else (1 − τ)·m + τ·new
    when new > 0), then lr_b = num/(m_x·m_d) with num = (fast_lr·BL)·dw_A (``base`` while either
    EMA is 0: ``ChoppedRule`` passes num itself, aihwkit's "no division"), ×lr when ``scaled``. xm, dm:
    the (B,) per-sample maxima. float64 throughout, the same operations in the same order as
    ``ChoppedRule._ema`` / ``fast_lr``. Returns (lrs, m_x, m_d)."""
    keep = 1.0 - tau
    lrs = []
    append = lrs.append
    for nx, nd in zip(xm, dm):
        mx = nx if mx <= 0 else (mx * keep + tau * nx if nx > 0 else mx)
        md = nd if md <= 0 else (md * keep + tau * nd if nd > 0 else md)
        f = num / (mx * md) if (mx > 0 and md > 0) else base
        append(f * lr if scaled else f)
    return lrs, mx, md


def auto_scale_lrs(xm: torch.Tensor, dm: torch.Tensor, mx: float, md: float, tau: float, num: float,
                   base: float, lr: float, scaled: bool,
                   backend: str | None = None):
    """``auto_scale_lrs_ref`` (xm, dm: (B,) tensors) through the compiled loop where it is available (a
    conv layer plans one call per image patch: tens of thousands per batch); identical numbers. Returns
    (lrs as a (B,) float64 numpy array, m_x, m_d)."""
    import numpy as np

    xm = xm.detach().to("cpu", torch.float64)
    dm = dm.detach().to("cpu", torch.float64)
    if _compiled("cpu", backend or _BACKEND):
        lrs, mx, md = torch.ops.analogtrain.auto_scale_lrs(
            xm, dm, float(mx), float(md), float(tau), 1.0 - tau, float(num), float(base), float(lr), bool(scaled))
        return lrs.numpy(), mx, md
    lrs, mx, md = auto_scale_lrs_ref(xm.tolist(), dm.tolist(), mx, md, tau, num, base, lr, scaled)
    return np.asarray(lrs, dtype=np.float64), mx, md


def agad_signals(v: torch.Tensor, mr: torch.Tensor, pr: torch.Tensor, sr: torch.Tensor, flips, beta: float,
                 backend: str | None = None) -> torch.Tensor | None:
    """AGAD's reference correction of a batch's R reads v (R, L), read r at position r mod n0 of the round
    order, with M, P (n0, L) and the switched flags sr (n0,) gathered into that order and updated in place
    (contract: ``analogtrain::agad_signals`` in ``csrc/cpu_ops.cpp``). Returns the signals (R, L), or None
    where the compiled kernel does not serve (reference backend, non-CPU tensors): the caller's torch
    rounds (``AGADRule.batch_signals``) are the twin, with the same float32 operations."""
    if v.device.type != "cpu" or not _compiled("cpu", backend or _BACKEND):
        return None
    return torch.ops.analogtrain.agad_signals(v.to(torch.float32).contiguous(), mr, pr, sr,
                                              torch.as_tensor(flips, dtype=torch.bool), float(beta))


def uniform_counters(seed: int, offsets, stream: int, a, b, draw: int) -> "numpy.ndarray":
    """``uniform_scalar`` of many counters at once: element q is draw ``draw`` of the sequence
    ``(seed, offsets[q], stream, a[q], b[q])`` (offsets, a, b: equal-length int sequences), the same
    float32 values as a float64 array (one ``uniform_scalar`` each) — numpy uint64 arithmetic, for the
    per-read draws a batch plans ahead (chopper flips) without one Python-int Philox per draw."""
    import numpy as np

    m = np.uint64(0xFFFFFFFF)
    k0, k1 = np.uint64(int(seed) & 0xFFFFFFFF), np.uint64((int(seed) >> 32) & 0xFFFFFFFF)
    def low32(v):  # int(e) & 0xFFFFFFFF of each entry (int64 two's complement keeps the same low bits)
        try:
            return np.asarray(v, dtype=np.int64).astype(np.uint64) & m
        except OverflowError:  # beyond int64: Python ints
            return np.asarray([int(e) & 0xFFFFFFFF for e in v], dtype=np.uint64)

    c0, c2, c3 = low32(a), low32(b), low32(offsets)
    c1 = np.full_like(c0, ((int(stream) & 0xFF) << 24) | ((int(draw) >> 2) & 0xFFFFFF))
    w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    for _ in range(10):  # 32×32 -> 64-bit products fit uint64
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0) & m, p1 & m, ((p0 >> np.uint64(32)) ^ c3 ^ k1) & m, p0 & m
        k0, k1 = (k0 + w0) & m, (k1 + w1) & m
    r = (c0, c1, c2, c3)[int(draw) & 3]
    # ((r >> 8) + 0.5)·2^-24 in float64, rounded to float32 (round-half-even), returned as float64 values
    u = (((r >> np.uint64(8)).astype(np.float64) + 0.5) * 2.0**-24).astype(np.float32)
    return u.astype(np.float64)


# --- the chopped-transfer family's per-batch A work (twin: reference_chopped.chopped_update_snapshots_ref) ---


def chopped_update_snapshots(w, w_p, params, gparams, x, d, starts, offsets, lrs, chop_in, chop_out, snap,
                             columns, dw, spec, seed, backend: str | None = None):
    """The A side of one mini-batch of a TT-family rule as ONE op: a sequence of C pulsed updates, each
    exactly the ``pulsed_update`` call the per-sample rule makes, plus a snapshot of the slice of ``w``
    that the transfer read after that call sees.

    w, w_p, params, gparams, dw, spec, seed   as ``pulsed_update`` (A's state and its pulse seed)
    x (B, I), d (B, O)                        the whole mini-batch
    starts   (C+1,) int64   call c updates samples starts[c] .. starts[c+1]−1 (numbered b = 0.. inside it)
    offsets  (C,) int64     call c's op-call counter (A.offset + c for consecutive calls)
    lrs      (C,) float64   call c's pulse-count lr
    chop_in  (C, I) / chop_out (C, O) float32 ±1 or None   the choppers of each call
    snap     (C,) int64     slice (column with ``columns``, else row) copied after call c; −1: none
    returns  (snaps (C, L) float32 — zero rows where snap < 0 —, call_pulses (C,) float64 — the value
             ``float(pulses.sum())`` of each separate call)

    Aggregated mode (``spec.aggregate``): the calls keep their pulse trains (same counters, so the same
    pulse counts as the pulsed mode), but each element's mean and variance are carried across ALL calls
    instead of being finished at every call's end. An element is finished (one normal, clip, store, as
    step 4a of ``reference.py``) only when it is observed: right before the snapshot after call c, the
    touched elements of slice ``snap[c]`` with call c's counters (``offsets[c]``: the draws call c's own
    finish would make), and after the last call every other touched element with ``offsets[C−1]``'s.
    A finished element restarts from its stored value (m = state + ref, v = 0). So the A array pays one
    normal per element per read instead of one per element per call (c-TTv2 reads one column per sample:
    ~B calls of one sample each); the first two moments of what every read sees are still exact. The
    per-sample loop (rules whose reads cannot be snapshotted) finishes at every call; on noise-free,
    reference-free devices both are bit-identical.

    The compiled op runs on CPU (``chopped_update_snapshots_cpu``) and CUDA tensors
    (``chopped_update_snapshots_cuda``: the calls through the CUDA update kernel, or one carry kernel
    in the aggregated mode); the ``reference`` backend, or a device without the compiled kernel, runs the
    torch twin (on CUDA tensors each call through ``pulsed_update`` of that backend)."""
    dev = w.device
    if _compiled(dev.type, backend or _BACKEND):
        if not dw > 0:
            raise ValueError(f"dw must be > 0, got {dw}")
        snaps, sums = torch.ops.analogtrain.chopped_update_snapshots(
            w, w_p, params.to(dev, torch.float32).contiguous(), gparams, _f32(x, dev), _f32(d, dev),
            torch.as_tensor(starts, dtype=torch.int64), torch.as_tensor(offsets, dtype=torch.int64),
            torch.as_tensor(lrs, dtype=torch.float64), _f32(chop_in, dev), _f32(chop_out, dev),
            torch.as_tensor(snap, dtype=torch.int64), bool(columns), float(dw), *_spec_args(spec), _i64(seed))
        return snaps, sums
    from analogtrain.ops.reference_chopped import chopped_update_snapshots_ref

    update_fn = None
    if dev.type != "cpu":
        def update_fn(*args, **kw):
            return pulsed_update(*args, **kw, backend=backend)
    return chopped_update_snapshots_ref(w, w_p, params, gparams, x, d, starts, offsets, lrs, chop_in, chop_out, snap,
                                        columns, dw, spec, seed, update_fn=update_fn)


def random_grid_offsets(seed: int, offsets, stream: int, n_a: int, b_idx, draw: int, normal: bool = True,
                        device=None, backend: str | None = None) -> torch.Tensor:
    """``random_grid`` with one op-call counter per row: (len(b_idx), n_a) float32 whose row q is draw
    ``draw`` of the sequences ``(seed, offsets[q], stream, a, b_idx[q])``, a < n_a — the IO noise of
    several separate one-sample reads (each with its own ``read_offset``) in one call. Same numbers as
    ``random_grid(seed, offsets[q], stream, n_a, [b_idx[q]], draw)`` row by row, on either backend."""
    b_idx = torch.as_tensor(b_idx, dtype=torch.int64)
    offsets = torch.as_tensor(offsets, dtype=torch.int64)
    dev = torch.device(device) if device is not None else b_idx.device
    if dev.type == "cpu" and _compiled("cpu", backend or _BACKEND):
        fn = (torch.ops.analogtrain.philox_normal_grid_offsets if normal
              else torch.ops.analogtrain.philox_uniform_grid_offsets)
        return fn(_i64(seed), offsets.cpu() & 0xFFFFFFFF, int(stream), int(n_a), b_idx.cpu(), int(draw))
    from analogtrain.ops.reference_chopped import grid_offsets_ref

    return grid_offsets_ref(int(seed), offsets.to(dev), int(stream), int(n_a), b_idx.to(dev), int(draw), normal)


def buffered_transfer_seq(h, v, ks, *, chop, lr_scales, writes, thr, bl, momentum, forget, w, w_p, params, gparams,
                          lr, dw, spec, seed, offsets, columns=True, no_buffer=False, cap=0.0,
                          backend: str | None = None):
    """R ``buffered_transfer`` calls in order, as one op: read r transfers slice ``ks[r]`` with signal
    ``v[r]`` (L,), chopper ``chop[r]`` (chop (R, L) or None), ``lr_scales[r]``, ``writes[r]`` and C's
    counter ``offsets[r]`` (C.offset + r for consecutive reads); the other arguments as
    ``buffered_transfer``. Returns (n (R, L), pulses (R, L)) float32. CUDA tensors and the reference
    backend loop over ``buffered_transfer`` (twin: ``reference_chopped.buffered_transfer_seq_ref``)."""
    kw = dict(thr=thr, bl=bl, momentum=momentum, forget=forget, w=w, w_p=w_p, params=params, gparams=gparams, lr=lr,
              dw=dw, spec=spec, seed=seed, columns=columns, no_buffer=no_buffer, cap=cap)
    if h.device.type == "cpu" and _compiled("cpu", backend or _BACKEND):
        dev = h.device
        return torch.ops.analogtrain.buffered_transfer_seq(
            h, _f32(v, dev), torch.as_tensor(ks, dtype=torch.int64), _f32(chop, dev),
            torch.as_tensor(lr_scales, dtype=torch.float64), torch.as_tensor(writes, dtype=torch.bool), float(thr),
            int(bl), float(momentum), bool(forget), bool(no_buffer), float(cap), bool(columns), w, w_p,
            params.to(dev, torch.float32).contiguous(), gparams, float(lr), float(dw), *_spec_args(spec),
            _i64(seed), _i64_counters(offsets))
    from analogtrain.ops.reference_chopped import buffered_transfer_seq_ref

    return buffered_transfer_seq_ref(h, v, ks, chop=chop, lr_scales=lr_scales, writes=writes, offsets=offsets,
                                     backend=backend, **kw)
