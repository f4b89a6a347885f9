"""SPEED's privacy accountant for the continuous (Gamma-difference) noise (docs/spec.md §3–§4).

Everything here is a pure function of public parameters (γ = 1/λ, τ, δ, the number of
moments) and, for the data-dependent bound only, of the vote counts.

Notation (unit-scale variables, λ = 1 unless a ``scale`` argument says otherwise):

* ``W_s = Gamma(s, 1) − Gamma(s, 1)``: symmetric variance-gamma law.  With τN secret
  shares the protecting noise on one class count is ``Z_τ = λ W_τ`` (docs/spec.md §3), and the
  difference of two classes' noises is ``λ W_{2τ}`` (four independent gammas).
* density ``f_s(x) = |x|^{s−1/2} K_{s−1/2}(|x|) / (√π Γ(s) 2^{s−1/2})``;
  ``f_s(0) = Γ(s − 1/2) / (2√π Γ(s))`` for s > 1/2 (infinite for s ≤ 1/2).
* central mass (DLMF 10.43.2 with the modified Struve functions L_ν):
  ``Pr[|W_s| ≤ x] = x [K_ν(x) L_{ν−1}(x) + L_ν(x) K_{ν−1}(x)]``, ν = s − 1/2.
* tail ``Pr[W_s > x] = e^{−x} ∫_0^∞ f̃_s(x + u) e^{−u} du`` with the exponentially scaled
  density ``f̃_s(y) = f_s(y) e^{y}`` (``scipy.special.kve``): log-space, no underflow.

Per-query ε (docs/spec.md §4, the paper's analysis), F the CDF of Z_τ in vote units
(F(t) = Pr[W_τ ≤ γ t]), ``g(t) = (1 − F(t)) / (1 − F(t + 2))``:

* ε₁ = ln(1 + (F(1) − F(−1)) / (1 − F(2)))
* ε₂ = ln(g(0) − g'(0)) (τ > 1/2 only: needs f(0) < ∞)
* ε_q = min(ε₁, ε₂) for τ > 1/2, ε₁ otherwise; τ = 1 gives exactly 2γ.

Data-dependent q (docs/spec.md §4): the paper's closed-form bound on
``Pr[W_{2τ} > Δ]`` summed over the runner-ups, then ``min(q, 1 − 1/K)``.

Moments accountant (PATE 2017, Theorems 2 and 3), orders l = 1..L:
``α(l) = min(ε l, ½ ε² l(l+1), ln[(1−q)((1−q)/(1 − e^ε q))^l + q e^{ε l}])`` (last term
only when ``q < (e^ε − 1)/(e^{2ε} − 1)``), summed over queries, and
``ε(δ) = min_l (Σ α(l) + ln(1/δ)) / l``.  The **data-independent** bound drops the third
term (equivalently: q is taken large enough that the condition fails), i.e.
``α(l) = min(ε_q l, ½ ε_q² l(l+1))``.  Both bounds are finally capped by basic
composition ``Σ ε_q`` (a pure-DP guarantee, valid for every δ); the dict reports which
one was smaller.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import integrate, special

__all__ = [
    "DEFAULT_MOMENTS",
    "MECHANISMS",
    "delta_total",
    "build_result",
    "check_counts",
    "check_delta",
    "check_failure_probability",
    "check_gamma",
    "check_moments",
    "check_tau",
    "epsilon",
    "log_q_bound_gamma",
    "moments_accountant",
    "moments_alpha",
    "per_query_epsilon",
    "per_query_epsilon_parts",
    "q_bound",
    "vg_cdf",
    "vg_log_sf",
    "vg_pdf",
]

DEFAULT_MOMENTS = 25
MECHANISMS = ("gamma", "lattice")

_PUBLISH_NOTE = (
    "data_independent may be published; data_dependent depends on the private votes and "
    "must not be published without smooth-sensitivity sanitisation (Papernot et al., PATE 2018)"
)


# --------------------------------------------------------------------------- guards
def check_gamma(gamma: float) -> float:
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"gamma (= 1/λ) must be a number, got {gamma!r}") from None
    if not math.isfinite(g) or g <= 0:
        raise ValueError(f"gamma (= 1/λ) must be a positive finite number, got {gamma!r}")
    return g


def check_tau(tau: float) -> float:
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau must be a number in (0, 1], got {tau!r}") from None
    if not (0.0 < t <= 1.0):
        raise ValueError(
            f"tau (fraction of holders whose noise stays secret) must lie in (0, 1], got {tau!r}"
        )
    return t


def check_delta(delta: float) -> float:
    try:
        d = float(delta)
    except (TypeError, ValueError):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}") from None
    if not (0.0 < d < 1.0):
        raise ValueError(f"delta must lie in the open interval (0, 1), got {delta!r}")
    return d


def check_moments(moments: int) -> int:
    if isinstance(moments, bool) or int(moments) != moments or moments < 1:
        raise ValueError(f"moments (highest moment order L) must be a positive integer, got {moments!r}")
    return int(moments)


def check_counts(counts: Any, *, allow_2d: bool = True) -> np.ndarray:
    """Vote counts as a float (Q, K) array; a 1-D array is one query."""
    try:
        arr = np.asarray(counts, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("counts must be a numeric array of vote counts") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or (not allow_2d and arr.shape[0] != 1):
        raise ValueError(
            f"counts must have shape (K,) for one query or (Q, K) for Q queries, got {np.shape(counts)}"
        )
    if arr.shape[1] < 2:
        raise ValueError(f"counts need at least two classes (K ≥ 2), got K = {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("counts must be finite")
    if np.any(arr < 0):
        raise ValueError("counts must be non-negative vote counts")
    return arr


# ------------------------------------------------------------ variance-gamma law
def _nu(s: float) -> float:
    return s - 0.5


def _log_norm(s: float) -> float:
    # log of 1 / (√π Γ(s) 2^{s−1/2})
    return -0.5 * math.log(math.pi) - special.gammaln(s) - _nu(s) * math.log(2.0)


def _scaled_pdf(y: np.ndarray | float, s: float) -> np.ndarray | float:
    """f̃_s(y) = f_s(y) e^{y} for y > 0 (unit scale)."""
    nu = _nu(s)
    return np.exp(_log_norm(s) + nu * np.log(y)) * special.kve(nu, y)


def _pdf_at_zero(s: float) -> float:
    if s <= 0.5:
        return math.inf
    return math.exp(special.gammaln(s - 0.5) - special.gammaln(s)) / (2.0 * math.sqrt(math.pi))


def _central_struve(x: float, s: float) -> float:
    """Pr[|W_s| ≤ x] by the Bessel–Struve closed form (accurate while it is not near 1)."""
    if x == 0.0:
        return 0.0
    nu = _nu(s)
    return float(
        x
        * (
            special.kv(nu, x) * special.modstruve(nu - 1.0, x)
            + special.modstruve(nu, x) * special.kv(nu - 1.0, x)
        )
    )


@functools.lru_cache(maxsize=65536)
def _log_tail(x: float, s: float) -> float:
    """log Pr[W_s > x] for x ≥ 0 (unit scale), accurate in relative terms far into the tail."""
    if x < 0:
        raise ValueError("internal: _log_tail needs x ≥ 0")
    if x == 0.0:
        return math.log(0.5)
    if x <= 1.0:
        c = _central_struve(x, s)
        if 0.0 <= c < 0.5:
            return math.log1p(-c) - math.log(2.0)
    val, _err = integrate.quad(
        lambda u: _scaled_pdf(x + u, s) * math.exp(-u),
        0.0,
        math.inf,
        epsabs=0.0,
        epsrel=1e-13,
        limit=400,
    )
    return -x + math.log(val)


@functools.lru_cache(maxsize=65536)
def _central(x: float, s: float) -> float:
    """Pr[|W_s| ≤ x] for x ≥ 0, without cancellation for small x."""
    if x == 0.0:
        return 0.0
    if x <= 1.0:
        c = _central_struve(x, s)
        if 0.0 <= c < 0.5:
            return c
    return -math.expm1(math.log(2.0) + _log_tail(x, s))


def _check_shape(shape: float, scale: float) -> tuple[float, float]:
    s, lam = float(shape), float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"shape (τ) must be a positive number, got {shape!r}")
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"scale λ must be a positive number, got {scale!r}")
    return s, lam


def vg_pdf(t: Any, tau: float, scale: float = 1.0) -> np.ndarray:
    """Density of Z_τ = Gamma(τ, λ) − Gamma(τ, λ) at t (docs/spec.md §3); any shape τ > 0."""
    tau, lam = _check_shape(tau, scale)
    x = np.abs(np.asarray(t, dtype=np.float64)) / lam
    out = np.empty_like(x)
    zero = x == 0
    out[zero] = _pdf_at_zero(tau) / lam
    nz = ~zero
    out[nz] = _scaled_pdf(x[nz], tau) * np.exp(-x[nz]) / lam
    return out


def vg_log_sf(x: float, shape: float, scale: float = 1.0) -> float:
    """log Pr[Gamma(shape, λ) − Gamma(shape, λ) > x] for any real x (shape > 0)."""
    s, lam = _check_shape(shape, scale)
    y = float(x) / lam
    if y >= 0:
        return _log_tail(y, s)
    return math.log1p(-math.exp(_log_tail(-y, s)))


def vg_cdf(t: Any, tau: float, scale: float = 1.0) -> np.ndarray:
    """CDF of Z_τ = Gamma(τ, λ) − Gamma(τ, λ) (vectorised; any shape τ > 0, e.g. 2τ for pairs)."""
    s, lam = _check_shape(tau, scale)
    x = np.asarray(t, dtype=np.float64) / lam
    flat = x.ravel()
    out = np.empty_like(flat)
    for i, v in enumerate(flat):
        a = abs(float(v))
        if a <= 1.0:
            half = 0.5 * _central(a, s)
            out[i] = 0.5 + half if v >= 0 else 0.5 - half
        else:
            tail = math.exp(_log_tail(a, s))
            out[i] = 1.0 - tail if v >= 0 else tail
    return out.reshape(x.shape)


# ----------------------------------------------------------------- per-query ε
@functools.lru_cache(maxsize=4096)
def _per_query_parts(gamma: float, tau: float) -> tuple[float, float]:
    # Everything in unit scale: F(t) = Pr[W_τ ≤ γ t].
    log_t2 = _log_tail(2.0 * gamma, tau)  # log(1 − F(2))
    central = _central(gamma, tau)  # F(1) − F(−1)
    eps1 = float(np.logaddexp(log_t2, math.log(central)) - log_t2) if central > 0 else 0.0
    if tau <= 0.5:
        return eps1, math.inf
    # ε₂ = ln(g(0) − g'(0)) with, in vote units, 1 − F(0) = ½, T2 = 1 − F(2),
    # f(t) = γ f_W(γ t):  g(0) − g'(0) = [½ T2 − γ(½ f_W(2γ) − T2 f_W(0))] / T2².
    # With T2 = e^{−2γ} t̃ and f_W(2γ) = e^{−2γ} f̃(2γ) this is
    # e^{2γ} [½ t̃ − ½ γ f̃(2γ) + γ t̃ f_W(0)] / t̃²: no exponential of γ is ever formed.
    t_scaled = math.exp(log_t2 + 2.0 * gamma)  # t̃
    f2_scaled = float(_scaled_pdf(2.0 * gamma, tau))  # f̃_W(2γ)
    f0 = _pdf_at_zero(tau)
    inner = 0.5 * t_scaled - 0.5 * gamma * f2_scaled + gamma * t_scaled * f0
    if inner <= 0:
        return eps1, math.inf
    eps2 = 2.0 * gamma + math.log(inner) - 2.0 * math.log(t_scaled)
    return eps1, eps2


def per_query_epsilon_parts(gamma: float, tau: float) -> dict[str, float]:
    """ε₁, ε₂ (``inf`` where not applicable) and ε_q = their minimum (docs/spec.md §4)."""
    g, t = check_gamma(gamma), check_tau(tau)
    eps1, eps2 = _per_query_parts(g, t)
    return {"eps1": eps1, "eps2": eps2, "epsilon": min(eps1, eps2)}


def per_query_epsilon(gamma: float, tau: float) -> float:
    """Pure ε of one noisy-argmax answer with τN secret shares (docs/spec.md §4); 2γ for τ = 1."""
    g, t = check_gamma(gamma), check_tau(tau)
    if t == 1.0:
        return 2.0 * g
    eps1, eps2 = _per_query_parts(g, t)
    return min(eps1, eps2)


# --------------------------------------------------------------------------- q
def _paper_log_pair_bound(delta: np.ndarray, tau: float) -> np.ndarray:
    """log of the paper's bound on Pr[W_{2τ} > Δ] (one runner-up), Δ ≥ 0."""
    lg2 = 2.0 * special.gammaln(tau)
    with np.errstate(divide="ignore"):
        log_d = np.log(delta)
    if tau > 0.5:
        log_c = -(math.log(tau) + (4.0 * tau - 2.0) * math.log(2.0) + lg2)
        log_extra = log_c + (2.0 * tau - 1.0) * log_d
    else:
        log_c = (
            1.5 * tau * math.log(1.5 * tau)
            + (1.0 - 1.5 * tau) * math.log(2.0 / tau - 3.0)
            - (math.log(tau) + (2.5 * tau - 1.0) * math.log(2.0) + lg2)
        )
        log_extra = log_c + 0.5 * tau * log_d
    return -delta + np.logaddexp(math.log(0.5), log_extra)


def log_q_bound_gamma(counts: np.ndarray, gamma: float, tau: float) -> np.ndarray:
    """log q for every row of a checked (Q, K) count array (paper's bound, before the 1 − 1/K cap)."""
    top = np.argmax(counts, axis=1)
    gaps = counts[np.arange(counts.shape[0]), top][:, None] - counts
    log_terms = _paper_log_pair_bound(gamma * gaps, tau)
    log_terms[np.arange(counts.shape[0]), top] = -np.inf
    return special.logsumexp(log_terms, axis=1)


def q_bound(counts: Any, gamma: float, tau: float, *, mechanism: str = "gamma",
            resolution: int | None = None) -> float:
    """Data-dependent bound on Pr[noisy argmax ≠ true argmax] for one query's counts (length K)."""
    g, t = check_gamma(gamma), check_tau(tau)
    arr = check_counts(counts, allow_2d=False)
    if mechanism == "lattice":
        from speed.privacy import lattice

        return lattice.lattice_q_bound(arr[0], g, t, _require_resolution(resolution))
    _check_mechanism(mechanism, resolution)
    k = arr.shape[1]
    return float(min(math.exp(log_q_bound_gamma(arr, g, t)[0]), 1.0 - 1.0 / k))


# ----------------------------------------------------------- moments accountant
def moments_alpha(eps_q: Any, log_q: Any | None, moments: int = DEFAULT_MOMENTS) -> np.ndarray:
    """α_i(l) for every query i (rows) and order l = 1..L (columns), PATE 2017 Thms 2–3.

    ``log_q=None`` (or a row of ``+inf``/NaN) gives the data-independent
    α(l) = min(ε l, ½ ε² l(l+1)).
    """
    eps = np.atleast_1d(np.asarray(eps_q, dtype=np.float64))[:, None]
    ls = np.arange(1, check_moments(moments) + 1, dtype=np.float64)[None, :]
    alpha = np.minimum(eps * ls, 0.5 * eps**2 * ls * (ls + 1.0))
    if log_q is None:
        return alpha
    lq = np.broadcast_to(np.atleast_1d(np.asarray(log_q, dtype=np.float64)), eps.shape[:1])[:, None]
    # condition q < (e^ε − 1)/(e^{2ε} − 1) = 1/(e^ε + 1)
    ok = lq < -np.logaddexp(0.0, eps)
    if np.any(ok):
        q = np.exp(np.where(ok, lq, -np.inf))
        eq = np.exp(np.where(ok, eps + lq, -np.inf))  # e^ε q < 1 on ok rows
        with np.errstate(divide="ignore", invalid="ignore"):
            first = (ls + 1.0) * np.log1p(-q) - ls * np.log1p(-eq)
            third = np.logaddexp(first, np.where(ok, lq, -np.inf) + eps * ls)
        alpha = np.where(ok, np.minimum(alpha, third), alpha)
    return alpha


def moments_accountant(alpha_sum: np.ndarray, delta: float) -> tuple[float, int]:
    """ε(δ) = min_l (Σα(l) + ln(1/δ)) / l and the minimising order l (1-based)."""
    d = check_delta(delta)
    a = np.asarray(alpha_sum, dtype=np.float64)
    ls = np.arange(1, a.size + 1, dtype=np.float64)
    vals = (a + math.log(1.0 / d)) / ls
    i = int(np.argmin(vals))
    return float(vals[i]), i + 1


def _compose(eps_q: np.ndarray, log_q: np.ndarray | None, delta: float,
             moments: int) -> tuple[float, int, str]:
    basic = float(np.sum(eps_q))
    alpha = moments_alpha(eps_q, log_q, moments) if eps_q.size else np.zeros((0, moments))
    value, order = moments_accountant(alpha.sum(axis=0), delta)
    if basic <= value:
        return basic, order, "basic_composition"
    return value, order, "moments"


def _check_mechanism(mechanism: str, resolution: int | None) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    if mechanism == "gamma" and resolution is not None:
        raise ValueError(
            "resolution is only meaningful with mechanism='lattice' (the continuous 'gamma' "
            "mechanism has no lattice)"
        )


def _require_resolution(resolution: int | None) -> int:
    if resolution is None:
        raise ValueError("mechanism='lattice' needs resolution=P (lattice steps per vote)")
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution P must be a positive integer, got {resolution!r}")
    return int(resolution)


def check_failure_probability(failure_probability: Any) -> float:
    try:
        b = float(failure_probability)
    except (TypeError, ValueError):
        raise ValueError(f"failure_probability must be a number in [0, 1), got {failure_probability!r}") from None
    if not (0.0 <= b < 1.0):
        raise ValueError(f"failure_probability must lie in [0, 1), got {failure_probability!r}")
    return b


def delta_total(delta: float, eps: float, failure: float) -> float:
    """δ + (1 + e^ε) B, computed in log space and capped at 1 (coupling lemma, docs/privacy.md)."""
    if failure <= 0:
        return float(delta)
    log_total = np.logaddexp(math.log(delta), math.log(failure) + np.logaddexp(0.0, eps))
    return max(float(delta), float(math.exp(min(0.0, log_total))))  # never below δ by rounding


def build_result(eps_q: float, log_q: np.ndarray | None, q_count: int, delta: float, moments: int,
                 failure_probability: float, histogram_level: bool,
                 **extra: Any) -> dict[str, Any]:
    """The ``epsilon`` dict, shared by both mechanisms.

    ``failure_probability`` β is the per-query probability that the computed label differs
    from the exact argmax of the noisy counts (noise outside the circuit's range, a wrong
    bootstrap).  If the per-query ε is a histogram-level bound (``histogram_level``: τ = 1,
    or the lattice histogram bound) the real output is post-processing of the noisy
    counts, so ε_q still holds and β only enlarges q (q + β): δ is unchanged.  Otherwise
    the real transcript equals the ideal one except with probability ≤ B = Qβ, and
    ``delta_total = δ + (1 + e^ε) B``.
    """
    eps_arr = np.full(q_count, eps_q)
    if log_q is not None and histogram_level and failure_probability > 0:
        log_q = np.minimum(np.logaddexp(log_q, math.log(failure_probability)), 0.0)
    dd, order_dd, method_dd = _compose(eps_arr, log_q, delta, moments)
    di, order_di, method_di = _compose(eps_arr, None, delta, moments)
    folded = 0.0 if histogram_level else q_count * failure_probability
    return {
        "data_dependent": dd,
        "data_independent": di,
        "order": order_dd,
        "order_data_independent": order_di,
        "method_data_dependent": method_dd,
        "method_data_independent": method_di,
        "per_query_epsilon": eps_q,
        "basic_composition": float(eps_q * q_count),
        "num_queries": int(q_count),
        "delta": delta,
        "failure_probability": failure_probability,
        "delta_total_data_independent": delta_total(delta, di, folded),
        "delta_total_data_dependent": delta_total(delta, dd, folded),
        "moments": moments,
        **extra,
        "publishable": "data_independent",
        "note": _PUBLISH_NOTE,
    }


def epsilon(
    counts: Any,
    gamma: float,
    tau: float,
    delta: float,
    moments: int = DEFAULT_MOMENTS,
    mechanism: str = "gamma",
    resolution: int | None = None,
    *,
    failure_probability: float = 0.0,
) -> dict[str, Any]:
    """Total (ε, δ) of answering the queries whose vote counts are the rows of ``counts``.

    Returns a dict with ``data_dependent`` (needs the private counts: NOT publishable),
    ``data_independent`` (publishable), ``order`` (moment order of the data-dependent
    bound), ``order_data_independent``, ``method_data_dependent`` /
    ``method_data_independent`` (``"moments"`` or ``"basic_composition"``, whichever was
    smaller), ``per_query_epsilon``, ``basic_composition``, ``num_queries``, ``delta``,
    ``delta_total_data_independent`` / ``delta_total_data_dependent`` (δ with the
    per-query ``failure_probability`` folded in, see :func:`build_result`), ``moments``,
    ``mechanism``, ``resolution``, ``publishable`` and ``note``.
    ``mechanism="lattice"`` (with ``resolution=P``) uses the lattice accountant of
    :mod:`speed.privacy.lattice`.
    """
    g, t, d, L = check_gamma(gamma), check_tau(tau), check_delta(delta), check_moments(moments)
    beta = check_failure_probability(failure_probability)
    arr = check_counts(counts)
    if mechanism == "lattice":
        from speed.privacy import lattice

        return lattice.lattice_epsilon(arr, g, t, d, _require_resolution(resolution), moments=L,
                                       failure_probability=beta)
    _check_mechanism(mechanism, resolution)
    q_count, k = arr.shape
    eps_q = per_query_epsilon(g, t)
    log_q = np.minimum(log_q_bound_gamma(arr, g, t), math.log1p(-1.0 / k)) if q_count else None
    return build_result(eps_q, log_q, q_count, d, L, beta, histogram_level=(t == 1.0),
                        mechanism="gamma", resolution=None)
