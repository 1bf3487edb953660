"""Device-to-device sampling: config -> ``SampledDevice`` (params (NP, O, I) float32, gparams (NG,) float64).

Random numbers: counter-based Philox of ``analogtrain.ops.rng`` with ``Stream.DTOD``, offset 0,
``a = i*in + j`` (flat element index of the (out, in) weight), so the same seed gives the same devices on
any machine and device type. Normals use ``b = 0`` and a fixed draw number per quantity; uniforms
(corrupt devices) use ``b = 1``::

    draw 0 ξ_max    b_max = w_max·(1 + w_max_dtod·ξ)
    draw 1 ξ_min    b_min = w_min·(1 + w_min_dtod·ξ)
    draw 2 ξ_gain   gain  = 1 + dw_min_dtod·ξ   (or exp(dw_min_dtod·ξ), log-normal)
    draw 3 ξ_r      r     = up_down_dtod·ξ
    draw 4, 5       family (linear_step γ_up/γ_down; softbounds_reference slope_down/slope_up;
                    powstep gain/up_down of the exponent)
    draw 6 ξ_ref    reference offset (reference families)
    draw 7 ξ_life   lifetime spread
    draw 8 ξ_diff   diffusion-rate spread (only with diffusion > 0)
    draw 9 ξ_reset  reset-target spread (only with reset_dtod > 0)
    uniform b=1 draw 0: corrupt-device test; draw 1: stuck value

(The *order* of draws does not match aihwkit's sequential RNG — it cannot — only the distributions do.)
Base equations (§2.2)::

    up_bias = min(up_down, 0);  down_bias = −max(up_down, 0)
    scale_up   = (gain + up_bias + r)·dw_min
    scale_down = (gain + down_bias − r)·dw_min
    enforce_consistency: scales ← |scales|; crossed bounds swapped; b_max ← |b_max|, b_min ← −|b_min|
    else: crossed bounds collapse to their midpoint (dead device)

then the family's own parameters, then corrupt devices (bounds = one value, scales 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from analogtrain.devices import params as P
from analogtrain.devices.step import step_magnitudes
from analogtrain.ops import rng as R

__all__ = ["SampledDevice", "sample_device", "symmetry_point"]


class _Ctx:
    """Mutable float64 per-element quantities during sampling, all of shape (N,)."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = int(seed)
        self.idx = torch.arange(n, dtype=torch.int64)
        self._cache: dict[int, torch.Tensor] = {}
        self.slope_up = self.full(0.0)
        self.slope_down = self.full(0.0)
        self.gamma_up = self.full(1.0)
        self.gamma_down = self.full(1.0)
        self.ref = self.full(0.0)
        self.sp = None  # symmetry point added to ref by subtract_symmetry_point (reset_bias gets it too)

    def full(self, v: float) -> torch.Tensor:
        return torch.full((self.n,), float(v), dtype=torch.float64)

    def xi(self, k: int) -> torch.Tensor:
        """Standard normals of draw k (float64 copy of the float32 Philox normals)."""
        if k not in self._cache:
            self._cache[k] = R.normal(self.seed, 0, R.Stream.DTOD, self.idx, 0, k).to(torch.float64)
        return self._cache[k]

    def uniform(self, k: int) -> torch.Tensor:
        return R.uniform(self.seed, 0, R.Stream.DTOD, self.idx, 1, k).to(torch.float64)

    @staticmethod
    def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        """num/den, 0 where den == 0 (aihwkit's guards for zero bounds)."""
        ok = den != 0
        return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))

    @staticmethod
    def where(c, a, b):
        return torch.where(c, a, b)

    def soft_slopes(self, a: float) -> None:
        """Soft-bounds slopes of strength a on each device's own bounds (signs as stored in params)."""
        self.slope_up = -a * self.safe_div(self.scale_up, self.bmax)  # up step scale_up·(1 − a·w/b_max)
        # down step scale_down·(1 − a·w/b_min)
        self.slope_down = -a * self.safe_div(self.scale_down, self.bmin)


@dataclass
class SampledDevice:
    """The sampled devices of one (out, in) array: the tensors the update kernels consume.

    params:  (NP, O, I) float32, layout ``analogtrain.devices.params``
    gparams: (NG,) float64 tile-wide scalars
    dw:      nominal granularity (aihwkit ``calcWeightGranularity``), for BL/UM and thresholds
    w_min, w_max: nominal (parameter) bounds of the visible weight
    write_noise: True -> the array keeps a persistent weight w_p (write noise std = gparams[G_WRITE_NOISE])
    apply_write_noise_on_set: redraw write noise on set_weights (aihwkit default True)
    decay_scale: (O, I) float32 per-mini-batch decay factor (1 − 1/L), or None without lifetime
    reset_bias: (O, I) float32 reset target b_reset (what decay decays to and a reset puts a device at),
        or None when it is 0 everywhere
    reset_std: cycle-to-cycle spread of a reset (weight units)
    diffusion_rate: (O, I) float32 per-mini-batch random-walk std, or None without diffusion
    name, family: of the config
    """

    params: torch.Tensor
    gparams: torch.Tensor
    dw: float
    w_min: float
    w_max: float
    write_noise: bool
    apply_write_noise_on_set: bool = True
    decay_scale: torch.Tensor | None = None
    reset_bias: torch.Tensor | None = None
    reset_std: float = 0.0
    diffusion_rate: torch.Tensor | None = None
    name: str = ""
    family: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def write_noise_std(self) -> float:
        """Write-noise std in weight units (write_noise_std·dw_min)."""
        return float(self.gparams[P.G_WRITE_NOISE].item())

    def symmetry_point(self) -> torch.Tensor:
        """(O, I) visible-weight symmetry point per element (see ``symmetry_point``)."""
        return symmetry_point(self.params, self.gparams)

    def step_up(self, w: torch.Tensor) -> torch.Tensor:
        """(O, I) noise-free up-step magnitude at visible weight ``w`` (no clipping)."""
        return step_magnitudes(w + self.params[P.P_REF].to(w.dtype), self.params, self.gparams)[0]

    def step_down(self, w: torch.Tensor) -> torch.Tensor:
        """(O, I) noise-free down-step magnitude at visible weight ``w`` (no clipping)."""
        return step_magnitudes(w + self.params[P.P_REF].to(w.dtype), self.params, self.gparams)[1]

    def apply_decay(self, w: torch.Tensor) -> None:
        """aihwkit decay once per mini-batch (lifetime > 0): ``w ← (w − b_reset)·decay_scale + b_reset``,
        clipped to [b_min, b_max] (§2.3; with b_reset = 0, ``w·decay_scale``).

        Acts on the visible weight in place, as aihwkit's base class does (ignores reference offsets)."""
        if self.decay_scale is None:
            return
        s = self.decay_scale.to(w.device)
        if self.reset_bias is None:
            w.mul_(s)
        else:
            b = self.reset_bias.to(w.device)
            w.sub_(b).mul_(s).add_(b)
        self._clip(w)

    def apply_diffusion(self, w: torch.Tensor, seed: int, offset: int) -> None:
        """aihwkit diffusion once per mini-batch (diffusion > 0): ``w ← clip(w + rate·ξ)`` with ξ the
        Philox normals (seed, offset, Stream.DIFFUSION, a = flat element, b = 0, draw 0); in place on the
        visible weight (as decay, ignoring reference offsets)."""
        if self.diffusion_rate is None:
            return
        idx = torch.arange(w.numel(), dtype=torch.int64, device=w.device)
        z = R.normal(int(seed), int(offset), R.Stream.DIFFUSION, idx, 0, 0, device=w.device).reshape(w.shape)
        w.add_(self.diffusion_rate.to(w.device) * z)
        self._clip(w)

    def reset_values(self, flat: torch.Tensor, seed: int, offset: int, event: int) -> torch.Tensor:
        """aihwkit reset of the elements ``flat`` (int64 flat indices): ``clip(b_reset + reset_std·ξ)``
        per element (1-D float32, visible weight), ξ from (seed, offset, Stream.RESET, a = element,
        b = event, draw 0)."""
        flat = flat.to(torch.int64)
        n = self.params.shape[1] * self.params.shape[2]
        b = (self.reset_bias.reshape(n)[flat] if self.reset_bias is not None
             else torch.zeros(flat.shape, dtype=torch.float32))
        z = R.normal(int(seed), int(offset), R.Stream.RESET, flat, int(event), 0).to(torch.float32)
        out = b + self.reset_std * z
        lo, hi = self.params[P.P_BMIN].reshape(n)[flat], self.params[P.P_BMAX].reshape(n)[flat]
        return torch.minimum(torch.maximum(out, lo), hi)

    def _clip(self, w: torch.Tensor) -> None:
        lo, hi = self.params[P.P_BMIN].to(w.device), self.params[P.P_BMAX].to(w.device)
        w.copy_(torch.minimum(torch.maximum(w, lo), hi))


def symmetry_point(params: torch.Tensor, gparams: torch.Tensor, iters: int = 80) -> torch.Tensor:
    """Visible-weight symmetry point per element: where the noise-free up and down steps are equal.

    Found by bisection (float64) of ``step_up(w) − step_down(w)`` over [b_min, b_max] (exact to ~1e-15
    for the linear kind, whose closed form is (scale_up − scale_down)/(slope_down − slope_up)). If the up
    step dominates everywhere the point is b_max (alternating pulses drift there), if the down step
    dominates b_min; a device with identical constant steps (every weight is a fixed point) gives 0.
    Returns ``w*_dev − ref`` with shape ``params.shape[1:]``."""
    p = params.to(torch.float64)
    lo = p[P.P_BMIN].clone()
    hi = p[P.P_BMAX].clone()

    def net(w):
        u, d = step_magnitudes(w, p, gparams)
        return u - d

    n_lo = net(lo)
    n_hi = net(hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        pos = net(mid) > 0
        lo = torch.where(pos, mid, lo)
        hi = torch.where(pos, hi, mid)
    sp = 0.5 * (lo + hi)
    sp = torch.where(n_lo <= 0, p[P.P_BMIN], sp)
    sp = torch.where(n_hi >= 0, p[P.P_BMAX], sp)
    flat = (n_lo == 0) & (n_hi == 0)  # identical constant steps: no unique point
    sp = torch.where(flat, torch.clamp(torch.zeros_like(sp), p[P.P_BMIN], p[P.P_BMAX]), sp)
    return (sp - p[P.P_REF]).to(torch.float32)


def sample_device(cfg, out_size: int, in_size: int, seed: int, perfect_bias: bool = False) -> SampledDevice:
    """Sample the (out_size, in_size) devices of one array from ``seed`` (reproducible everywhere).

    cfg: a device config (dataclass, DictConfig or dict; knobs are resolved here if still present).
    perfect_bias: aihwkit ``perfect_bias``: the last column (analog bias column) gets the base parameters
    of an ideal device (scales dw_min, bounds ×100) from which the family then samples its own."""
    from analogtrain.devices.registry import device_from_config

    cfg = device_from_config(cfg)
    O, I = int(out_size), int(in_size)
    N = O * I
    ctx = _Ctx(N, seed)

    # --- base PulsedDevice (§2.2) ---
    bmax = cfg.w_max * (1.0 + cfg.w_max_dtod * ctx.xi(0))
    bmin = cfg.w_min * (1.0 + cfg.w_min_dtod * ctx.xi(1))
    if cfg.dw_min_dtod_log_normal:
        gain = torch.exp(cfg.dw_min_dtod * ctx.xi(2))
    else:
        gain = 1.0 + cfg.dw_min_dtod * ctx.xi(2)
    r = cfg.up_down_dtod * ctx.xi(3)
    up_bias = min(cfg.up_down, 0.0)
    down_bias = -max(cfg.up_down, 0.0)
    scale_up = (gain + up_bias + r) * cfg.dw_min
    scale_down = (gain + down_bias - r) * cfg.dw_min
    crossed = bmin > bmax
    if cfg.enforce_consistency:
        scale_up, scale_down = scale_up.abs(), scale_down.abs()
        bmin, bmax = torch.where(crossed, bmax, bmin), torch.where(crossed, bmin, bmax)
        bmax, bmin = bmax.abs(), -bmin.abs()
    else:
        mid = 0.5 * (bmin + bmax)
        bmin, bmax = torch.where(crossed, mid, bmin), torch.where(crossed, mid, bmax)
    ctx.bmin, ctx.bmax, ctx.scale_up, ctx.scale_down = bmin, bmax, scale_up, scale_down
    bias_col = None
    if perfect_bias and I > 0:
        # aihwkit perfect_bias (§2.2): the analog bias column's base parameters are ideal (scales dw_min,
        # bounds ×100) before the family samples its own from them (slopes, exponents, reference offset),
        # in aihwkit's populate order: its devices then have the family's response on those bounds
        bias_col = (ctx.idx % I) == I - 1
        ctx.scale_up = torch.where(bias_col, ctx.full(cfg.dw_min), ctx.scale_up)
        ctx.scale_down = torch.where(bias_col, ctx.full(cfg.dw_min), ctx.scale_down)
        ctx.bmin = torch.where(bias_col, ctx.full(100.0 * cfg.w_min), ctx.bmin)
        ctx.bmax = torch.where(bias_col, ctx.full(100.0 * cfg.w_max), ctx.bmax)

    # --- family (slopes / exponents / reference) ---
    cfg.sample_family(ctx)

    # --- corrupt (stuck) devices ---
    if cfg.corrupt_devices_prob > 0:
        stuck = ctx.uniform(0) < cfg.corrupt_devices_prob
        if bias_col is not None:  # (aihwkit: perfect bias overrides a stuck bias device)
            stuck = stuck & ~bias_col
        lo = torch.clamp(torch.minimum(ctx.bmin, ctx.bmax), min=-cfg.corrupt_devices_range)
        hi = torch.clamp(torch.maximum(ctx.bmin, ctx.bmax), max=cfg.corrupt_devices_range)
        val = lo + (hi - lo) * ctx.uniform(1)
        ctx.bmin = torch.where(stuck, val, ctx.bmin)
        ctx.bmax = torch.where(stuck, val, ctx.bmax)
        zero = ctx.full(0.0)
        for name in ("scale_up", "scale_down", "slope_up", "slope_down"):
            setattr(ctx, name, torch.where(stuck, zero, getattr(ctx, name)))

    planes = [None] * P.NP
    planes[P.P_BMIN] = ctx.bmin
    planes[P.P_BMAX] = ctx.bmax
    planes[P.P_SCALE_UP] = ctx.scale_up
    planes[P.P_SCALE_DOWN] = ctx.scale_down
    planes[P.P_SLOPE_UP] = ctx.slope_up
    planes[P.P_SLOPE_DOWN] = ctx.slope_down
    planes[P.P_GAMMA_UP] = ctx.gamma_up
    planes[P.P_GAMMA_DOWN] = ctx.gamma_down
    planes[P.P_REF] = ctx.ref
    params = torch.stack([t.to(torch.float32) for t in planes]).reshape(P.NP, O, I).contiguous()

    gparams = torch.zeros(P.NG, dtype=torch.float64)
    gparams[P.G_KIND] = float(cfg.KIND)
    gparams[P.G_DW_MIN_STD] = cfg.dw_min_std
    gparams[P.G_MULT_NOISE] = 1.0
    cfg.fill_gparams(gparams)
    gparams[P.G_WRITE_NOISE] = cfg.write_noise()

    decay = None
    if cfg.lifetime > 0:
        life = cfg.lifetime * (1.0 + cfg.lifetime_dtod * ctx.xi(7))
        decay = torch.where(life > 1.0, 1.0 - 1.0 / life.clamp(min=1.0), torch.zeros_like(life))
        decay = decay.to(torch.float32).reshape(O, I)
    diffusion = None
    if cfg.diffusion > 0:  # |diffusion·(1 + diffusion_dtod·ξ)| (§2.2)
        diffusion = (cfg.diffusion * (1.0 + cfg.diffusion_dtod * ctx.xi(8))).abs()
        diffusion = diffusion.to(torch.float32).reshape(O, I)
    # reset target: reset + reset_dtod·ξ (additive), + the symmetry point the family subtracted (§2.7, 2.9)
    reset = ctx.full(cfg.reset)
    if cfg.reset_dtod > 0:
        reset = reset + cfg.reset_dtod * ctx.xi(9)
    if ctx.sp is not None:
        reset = reset + ctx.sp
    reset_bias = reset.to(torch.float32).reshape(O, I) if bool((reset != 0).any()) else None

    return SampledDevice(
        params=params,
        gparams=gparams,
        dw=float(cfg.granularity()),
        w_min=float(cfg.w_min),
        w_max=float(cfg.w_max),
        write_noise=bool(gparams[P.G_WRITE_NOISE].item() > 0),
        apply_write_noise_on_set=bool(getattr(cfg, "apply_write_noise_on_set", True)),
        decay_scale=decay,
        reset_bias=reset_bias,
        reset_std=float(cfg.reset_std),
        diffusion_rate=diffusion,
        name=cfg.name,
        family=cfg.family,
    )
