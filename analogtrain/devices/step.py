"""The per-pulse device step: ONE torch function that the C++/CUDA header ``csrc/device_step.h`` mirrors.

All arithmetic is float32, in exactly the order written here (each line one rounding), so a C++ port
compiled with ``-ffp-contract=off`` reproduces the deterministic paths bit for bit (``exp``/``pow`` of
the exp/pow kinds may differ by an ulp between libm and torch). ``gparams`` (float64) are rounded to
float32 once before use. Equations per kind: see ``analogtrain.devices.params``.
"""

from __future__ import annotations

import torch

from analogtrain.devices import params as P

__all__ = ["aggregate_finish", "aggregate_moments", "aggregate_step", "device_step", "step_magnitudes"]


def _g32(gparams: torch.Tensor, idx: int) -> torch.Tensor:
    """One tile-wide scalar as a float32 0-d tensor (on gparams' device)."""
    return gparams[idx].to(torch.float32)


def device_step(
    w_dev: torch.Tensor,
    up: torch.Tensor,
    params: torch.Tensor,
    gparams: torch.Tensor,
    xi: torch.Tensor | None,
) -> torch.Tensor:
    """Apply ONE pulse to every element and clip: the response function of all device kinds.

    w_dev:   (*S) float32 device conductance (visible weight + reference offset)
    up:      (*S) bool, True = up pulse (+scale_up ...), False = down pulse
    params:  (NP, *S) float32 sampled parameters of these elements (layout ``devices.params``)
    gparams: (NG,) float64 tile-wide scalars
    xi:      (*S) float32 standard normals (cycle-to-cycle noise), or None for the noise-free step
    returns  (*S) float32 new w_dev, clipped to [b_min, b_max] (exp/pow kinds: unchanged, unclipped,
             where b_max − b_min <= 0, as aihwkit skips such devices)
    """
    kind = int(gparams[P.G_KIND].item())
    bmin = params[P.P_BMIN]
    bmax = params[P.P_BMAX]
    sc_up = params[P.P_SCALE_UP]
    sc_dn = params[P.P_SCALE_DOWN]
    sigma = _g32(gparams, P.G_DW_MIN_STD)
    if xi is None:
        noise = None
        fac = torch.ones_like(w_dev)  # (1 + σξ) with ξ = 0
    else:
        noise = sigma * xi  # σξ
        fac = 1.0 + noise  # (1 + σξ)

    if kind == P.KIND_LINEAR:
        s_up = params[P.P_SLOPE_UP]
        s_dn = params[P.P_SLOPE_DOWN]
        mult = bool(gparams[P.G_MULT_NOISE].item() != 0.0)
        if mult:
            d_up = (s_up * w_dev + sc_up) * fac  # (slope_up·w + scale_up)(1 + σξ)
            d_dn = (s_dn * w_dev + sc_dn) * fac
        else:
            d_up = s_up * w_dev + sc_up * fac  # slope_up·w + scale_up(1 + σξ)
            d_dn = s_dn * w_dev + sc_dn * fac
        new = torch.where(up, w_dev + d_up, w_dev - d_dn)
        return torch.minimum(torch.maximum(new, bmin), bmax)

    if kind == P.KIND_EXP:
        rng = bmax - bmin
        two_a = _g32(gparams, P.G_ES_A) * 2.0
        z = two_a * w_dev / rng + _g32(gparams, P.G_ES_B)  # z = 2a·w/(b_max − b_min) + b
        a_up, g_up = _g32(gparams, P.G_ES_A_UP), _g32(gparams, P.G_ES_GAMMA_UP)
        a_dn, g_dn = _g32(gparams, P.G_ES_A_DOWN), _g32(gparams, P.G_ES_GAMMA_DOWN)
        y_up = torch.clamp(1.0 - a_up * torch.exp(g_up * z), min=0.0)  # max(1 − A_up·exp(γ_up·z), 0)
        y_dn = torch.clamp(1.0 - a_dn * torch.exp(-g_dn * z), min=0.0)  # max(1 − A_dn·exp(−γ_dn·z), 0)
        std_add = _g32(gparams, P.G_ES_STD_ADD)
        std_slope = _g32(gparams, P.G_ES_STD_SLOPE)
        complex_noise = (noise is not None and float(sigma) > 0
                         and (float(std_add) != 0 or float(std_slope) != 0))
        if complex_noise:
            delta = torch.where(up, y_up * sc_up, -(y_dn * sc_dn))
            spread = (delta.abs() + std_add) + std_slope * w_dev.abs()
            new = (w_dev + delta) + sigma * spread * xi
        else:
            new = torch.where(up, w_dev + (y_up * fac) * sc_up, w_dev - (y_dn * fac) * sc_dn)
        new = torch.minimum(torch.maximum(new, bmin), bmax)
        return torch.where(rng > 0, new, w_dev)

    if kind == P.KIND_POW:
        rng = bmax - bmin
        safe = torch.where(rng > 0, rng, torch.ones_like(rng))
        base_up = (bmax - w_dev) / safe
        base_dn = (w_dev - bmin) / safe
        d_up = (sc_up * torch.pow(base_up.clamp(min=0.0), params[P.P_GAMMA_UP])) * fac
        d_dn = (sc_dn * torch.pow(base_dn.clamp(min=0.0), params[P.P_GAMMA_DOWN])) * fac
        new = torch.where(up, w_dev + d_up, w_dev - d_dn)
        new = torch.minimum(torch.maximum(new, bmin), bmax)
        return torch.where(rng != 0, new, w_dev)

    raise ValueError(f"unknown device kind {kind}")


# α is clamped to >= −1 + 2⁻¹² in the aggregated moments: a degenerate device (one pulse overshoots the
# fixed point, 1 + α <= 0) would make log1p(α) undefined (the contract's choice; d keeps s and c as they are)
AGG_ALPHA_MIN = -1.0 + 2.0**-12
# n·ε below this: Σ_{j<n} (1 + ε)^j = n·(1 + (n − 1)·ε/2) (the next term, n³ε²/6 relative, is below float
# resolution; expm1(n·log1p ε)/ε would lose digits there)
AGG_SERIES_MAX = 2.0**-10
# n <= this: the geometric sums Σ_{k<n} (1 + x)^k are the binomial polynomials n + x·(C(n,2) + x·(C(n,3) +
# x·C(n,4))) (exact identities; no transcendental call for the few pulses per sample of sparse updates)
AGG_POLY_MAX = 4


def agg_poly_sum(x: torch.Tensor, nf: torch.Tensor) -> torch.Tensor:
    """Σ_{k<n} (1 + x)^k for 1 <= n <= AGG_POLY_MAX (float32 nf): n + x·(c2 + x·(c3 + x·c4)) with the
    binomial coefficients c_j = C(n, j) (c2 = n(n−1)·0.5, c3 = c2·(n−2)/3, c4 = c3·(n−3)·0.25: exact small
    integers), Horner innermost first, one rounding per operation (the kernels' agg_poly_sum)."""
    c2 = (nf * (nf - 1.0)) * 0.5
    c3 = (c2 * (nf - 2.0)) / 3.0
    c4 = (c3 * (nf - 3.0)) * 0.25
    return nf + x * (c2 + x * (c3 + x * c4))


def aggregate_moments(
    m: torch.Tensor,
    v: torch.Tensor,
    n: torch.Tensor,
    up: torch.Tensor,
    params: torch.Tensor,
    gparams: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Carry the exact mean and variance of every element through n same-signed pulses (KIND_LINEAR).

    m, v:    (*S) float32 mean and variance of the device conductance before the pulses
    n:       (*S) int or float tensor, pulses per element, >= 1
    up:      (*S) bool, True = up pulses
    params:  (NP, *S) float32; gparams: (NG,) float64 (kind must be KIND_LINEAR)
    returns  (m', v') (*S) float32; a mean beyond a bound is clipped to it and its variance reset to 0
             (the device sits at its bound)

    Physics: the per-pulse map of KIND_LINEAR is affine, w' = w + g(s·w + c)(1 + σξ) (mult noise) or
    w' = w + g(s·w + c(1 + σξ)) (additive), g = ±1, (s, c) = (slope, scale) of the pulse direction. Per
    pulse, with α = g·s and A = 1 + α: m' = A·m + g·c; mult V' = (A² + α²σ²)·V + σ²·(α·m + g·c)²;
    additive V' = A²·V + σ²c². Along the chain α·m_k + g·c = d·A^k with d = g(s·m + c) (the first pulse's
    mean step), so after n pulses, with E = A^n − 1 = expm1(n·log1p α):

        m_n = m + d·Σ_{k<n} A^k = m + d·E/α                         (α = 0: m + n·d)
        mult:      V_n = A^{2n}·q^n·V + (σ·d·A^{n−1})²·Sq,  q = 1 + ε, ε = (ασ/A)², Sq = Σ_{j<n} q^j,
                   q^n = 1 + ε·Sq
        additive:  V_n = A^{2n}·V + (σc)²·Sa,  Sa = Σ_{k<n} A^{2k} = E(E + 2)/(α(α + 2))

    float32, one rounding per operation in exactly the contract's order, which the C++/CUDA twin
    (``csrc/device_step.h`` agg_dir / aggregate_sample) follows too: per-direction constants 1/α, 1/A,
    1/ε, 1/(α(α + 2)) are reciprocals that multiply; n == 1 uses the exact values E = α, R = Sq = Sa =
    A^{n−1} = 1; 2 <= n <= ``AGG_POLY_MAX`` uses the binomial polynomials (``agg_poly_sum``) for
    R = Σ A^k (then E = α·R), Sq = Σ (1 + ε)^j and Sa = Σ (1 + β)^k, β = α·(α + 2) = A² − 1 (contract
    version 4); larger n the closed forms above, where small n·ε uses the series of Sq. Results agree
    with the kernels up to the rounding of log1p/expm1 between libraries (exactly where every n <= 4).
    α is clamped to >= ``AGG_ALPHA_MIN`` wherever it appears (not in d).
    """
    kind = int(gparams[P.G_KIND].item())
    if kind != P.KIND_LINEAR:
        raise ValueError("aggregated pulses need a KIND_LINEAR device (constant_step, linear_step, "
                         f"softbounds), got kind {kind}")
    sigma = _g32(gparams, P.G_DW_MIN_STD)
    one = torch.ones_like(m)
    gs = torch.where(up, one, -one)  # +1 up, −1 down
    s = torch.where(up, params[P.P_SLOPE_UP], params[P.P_SLOPE_DOWN])
    c = torch.where(up, params[P.P_SCALE_UP], params[P.P_SCALE_DOWN])
    # per-direction constants (agg_dir)
    alpha = torch.clamp(torch.where(up, s, -s), min=AGG_ALPHA_MIN)  # g·s, clamped for degenerate devices
    lg = torch.log1p(alpha)  # log A
    ia = 1.0 / alpha  # (unused where α = 0)
    i_a = 1.0 / (1.0 + alpha)  # 1/A
    # the sample (aggregate_sample)
    d = gs * (s * m + c)  # s·m + c as device_step (no FMA): the first pulse's mean step
    nf = n.to(torch.float32)  # exact for the small counts of a pulse train
    single = nf == 1.0
    poly = nf <= AGG_POLY_MAX  # (and not single: the polynomials give the n = 1 values too)
    r_poly = agg_poly_sum(alpha, nf)  # Σ_{k<n} A^k for n <= 4
    e = torch.where(single, alpha, torch.where(poly, alpha * r_poly, torch.expm1(nf * lg)))  # A^n − 1
    r = torch.where(single, one, torch.where(poly, r_poly, torch.where(alpha == 0, nf, e * ia)))  # Σ_{k<n} A^k
    m_new = m + d * r
    if float(sigma) > 0.0:
        an = 1.0 + e  # A^n
        if bool(gparams[P.G_MULT_NOISE].item() != 0.0):
            q = (alpha * sigma) * i_a  # ασ/A
            eps = q * q  # ε
            lq = torch.log1p(eps)
            ie = 1.0 / eps  # (unused where ε = 0)
            sq = torch.where(eps == 0, nf, torch.where(nf * eps < AGG_SERIES_MAX,
                                                       nf * (1.0 + ((nf - 1.0) * eps) * 0.5),
                                                       torch.expm1(nf * lq) * ie))  # Σ_{j<n} (1 + ε)^j
            sq = torch.where(single, one, torch.where(poly, agg_poly_sum(eps, nf), sq))
            an1 = torch.where(single, one, an * i_a)  # A^{n−1}
            t = (sigma * d) * an1  # σ·d·A^{n−1}
            v_new = ((an * an) * (1.0 + eps * sq)) * v + (t * t) * sq
        else:
            ia2 = 1.0 / (alpha * (alpha + 2.0))  # (unused where α = 0)
            sa = torch.where(alpha == 0, nf, (e * (e + 2.0)) * ia2)  # Σ_{k<n} A^{2k}
            sa = torch.where(single, one, torch.where(poly, agg_poly_sum(alpha * (alpha + 2.0), nf), sa))
            sc = sigma * c
            v_new = (an * an) * v + (sc * sc) * sa
    else:
        v_new = torch.zeros_like(v)
    # a degenerate device (α clamped: A = 2^-12) can give 0·inf = NaN or inf in v'; it sits at its
    # fixed point, so v' = 0 there (the kernels: !(v' <= FLT_MAX) -> 0)
    v_new = torch.where(v_new <= torch.finfo(torch.float32).max, v_new, torch.zeros_like(v_new))
    bmin, bmax = params[P.P_BMIN], params[P.P_BMAX]
    out = (m_new < bmin) | (m_new > bmax)
    m_new = torch.where(out, torch.minimum(torch.maximum(m_new, bmin), bmax), m_new)
    v_new = torch.where(out, torch.zeros_like(v_new), v_new)
    return m_new, v_new


def aggregate_finish(
    m: torch.Tensor, v: torch.Tensor, params: torch.Tensor, gparams: torch.Tensor, z: torch.Tensor | None
) -> torch.Tensor:
    """The device conductance drawn from the carried moments: clip(m + sqrt(v)·z, b_min, b_max).

    m, v (*S) float32; params (NP, *S); z (*S) float32 standard normals, or None when dw_min_std == 0
    (then the result is clip(m)). Returns (*S) float32."""
    out = m
    if float(_g32(gparams, P.G_DW_MIN_STD)) > 0.0:
        if z is None:
            raise ValueError("aggregated pulses: z (one standard normal per element) is required when "
                             "dw_min_std > 0")
        # sqrt correctly rounded, as the kernels' (sqrtf, vsqrtps): torch's float32 sqrt is off by an ulp
        # on some CPU builds; the float64 root rounded to float32 is the correctly rounded float root
        out = m + torch.sqrt(v.to(torch.float64)).to(torch.float32) * z
    return torch.minimum(torch.maximum(out, params[P.P_BMIN]), params[P.P_BMAX])


def aggregate_step(
    w_dev: torch.Tensor,
    n: torch.Tensor,
    up: torch.Tensor,
    params: torch.Tensor,
    gparams: torch.Tensor,
    z: torch.Tensor | None,
) -> torch.Tensor:
    """n same-signed pulses on every element as ONE Gaussian step (aggregated pulses of one sample).

    w_dev (*S) float32; n (*S) int/float >= 1; up (*S) bool; params (NP, *S); gparams (NG,); z (*S)
    float32 one standard normal per element (None only when dw_min_std == 0). Returns (*S) float32
    ``aggregate_finish(*aggregate_moments(w_dev, 0, n, up, ...), z)``: the exact mean and variance of the
    n-pulse chain started at w_dev, a Gaussian shape, clipped once. (The op carries the moments through
    all samples of a call and draws once at the end: ``ops/reference.py`` step 4a.)"""
    m, v = aggregate_moments(w_dev, torch.zeros_like(w_dev), n, up, params, gparams)
    return aggregate_finish(m, v, params, gparams, z)


def step_magnitudes(w_dev: torch.Tensor, params: torch.Tensor, gparams: torch.Tensor):
    """Noise-free (up, down) step magnitudes at device conductance ``w_dev`` *without* clipping.

    Returns two (*S) tensors ``(step_up, step_down)`` (>= 0 for consistent devices): the response
    functions q₊(w)·dw and q₋(w)·dw of the theory papers, used by the ``expected`` update mode, the
    symmetry-point solver and the plots. Computed in the dtype of ``w_dev`` (float64 for analysis)."""
    dt = w_dev.dtype
    p = params.to(dt)
    kind = int(gparams[P.G_KIND].item())
    bmin, bmax = p[P.P_BMIN], p[P.P_BMAX]
    sc_up, sc_dn = p[P.P_SCALE_UP], p[P.P_SCALE_DOWN]
    if kind == P.KIND_LINEAR:
        return p[P.P_SLOPE_UP] * w_dev + sc_up, p[P.P_SLOPE_DOWN] * w_dev + sc_dn
    g = gparams.to(dt)
    rng = bmax - bmin
    if kind == P.KIND_EXP:
        ok = rng > 0
        z = 2.0 * g[P.G_ES_A] * w_dev / torch.where(ok, rng, torch.ones_like(rng)) + g[P.G_ES_B]
        y_up = torch.clamp(1.0 - g[P.G_ES_A_UP] * torch.exp(g[P.G_ES_GAMMA_UP] * z), min=0.0)
        y_dn = torch.clamp(1.0 - g[P.G_ES_A_DOWN] * torch.exp(-g[P.G_ES_GAMMA_DOWN] * z), min=0.0)
        zero = torch.zeros_like(w_dev)
        return torch.where(ok, y_up * sc_up, zero), torch.where(ok, y_dn * sc_dn, zero)
    if kind == P.KIND_POW:
        ok = rng != 0
        safe = torch.where(ok, rng, torch.ones_like(rng))
        up = sc_up * torch.pow(((bmax - w_dev) / safe).clamp(min=0.0), p[P.P_GAMMA_UP])
        dn = sc_dn * torch.pow(((w_dev - bmin) / safe).clamp(min=0.0), p[P.P_GAMMA_DOWN])
        zero = torch.zeros_like(w_dev)
        return torch.where(ok, up, zero), torch.where(ok, dn, zero)
    raise ValueError(f"unknown device kind {kind}")
