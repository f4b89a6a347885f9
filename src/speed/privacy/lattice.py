"""Accountant for the lattice-native noise that the encrypted pipeline really adds (docs/spec.md §3b).

Units: noisy counts live on the lattice (1/P)·Z and are handled in *lattice steps*, so one
vote is ``P = resolution`` steps.  With ``θ = e^{−1/(λP)} = e^{−γ/P}`` (``γ = 1/λ``) and
``p = 1 − θ``, each holder adds ``X − Y`` with X, Y i.i.d. NegativeBinomial(1/N, p); τN
secret shares sum to ``S_τ = NB(τ, p) − NB(τ, p)`` and all N to the discrete Laplace law
``Pr[Z = z] = (1 − θ)/(1 + θ) θ^{|z|}``.

Exact PMF.  With ``b_k = Γ(k + s)/(Γ(s) k!)`` the NB(s, p) PMF is ``p^s b_k θ^k``, so for
z ≥ 0 ``Pr[S_s = z] = p^{2s} θ^z h_s(z)`` with ``h_s(z) = Σ_k b_k θ^{2k} b_{k+z}``.  The
table of h_s is a cross-correlation of a geometrically decaying and a polynomially varying
sequence, computed by FFT in this scaled form (no underflow however far the tail; relative
truncation error < 1e−17).  Survival sums are accumulated in the same scaled form.

Per-query ε, two rigorous bounds (neighbouring vote vectors move one vote from class a to
class b, i.e. the count vector moves by −P in coordinate a and +P in coordinate b):

* ``bound="histogram"``: releasing the whole noisy histogram costs
  ``2 D``, ``D = max_z |log π(z) − log π(z + P)|`` (two coordinates, independent noise).
  The argmax and anything else computed from the noisy counts is post-processing, so
  this holds whatever the circuit does, including ties and overflow.
* ``bound="argmax"`` (default, never larger): ``2 log R`` with
  ``R = sup_u F(u + P) / F(u)``, F the CDF of S_τ.  Proof sketch: fix the noise of every
  class but a.  For a noisy argmax with a *priority tie rule* (ties go to a fixed class
  order, or to an order drawn independently of the data) the event "output = j" is, as a
  function of a's noisy count v, a down-set {v ≤ t} for j ≠ a and an up-set {v ≥ t} for
  j = a.  Its probability over a's noise is F(t − c_a) or Pr[S ≥ t − c_a]; shifting c_a
  by P changes either by a factor in [1/R, R] (symmetry of S makes both sup ratios equal
  to R).  Averaging over the other classes' noise keeps the factor, so changing one
  coordinate by P costs log R, and the a → b vote move (two coordinates) costs 2 log R.
  As ``F(u+P)/F(u) = Σ_{z≤u} π(z+P) / Σ_{z≤u} π(z) ≤ e^{D}``, it is never worse than
  the histogram bound, and it stays finite as P → ∞ even for τ ≤ 1/2, where the density
  of the continuous limit is infinite at 0.  It requires the exact argmax of the noisy
  counts (no overflow, priority tie rule).

The supremum over the infinite lattice is a finite computation plus a proven tail bound:
for s ≤ 1 and w ≥ 0, ``Pr[S = w + 1] ≥ θ (w + s)/(w + 1) Pr[S = w]`` (because
``b_{j+1}/b_j = (j+s)/(j+1)`` increases in j), so for |z| ≥ a the log-ratio over P steps
is at most ``γ + Σ_{w=a}^{a+P−1} log((w + 1)/(w + s))``, which tends to γ.  The window is
doubled until this tail bound is below the window's maximum (else the bound is used).

Data-dependent q: union bound over runner-ups j of the exact
``Pr[S_j − S_{j*} ≥ P (n_{j*} − n_j)]`` (ties counted as errors), where
``S_j − S_{j*} = NB(2τ, p) − NB(2τ, p)``; then ``min(q, 1)``.  Moments accountant exactly
as for the continuous noise (:mod:`speed.privacy.composition`).

As P → ∞ the lattice law tends to the Gamma(τ, λ) difference: τ = 1 gives 2γ exactly for
every P, and for τ < 1 the argmax bound tends to :func:`continuous_argmax_epsilon` and q to
:func:`continuous_q` (tested numerically).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import optimize, signal, special

from speed.privacy.checks import (
    check_counts,
    check_delta,
    check_failure_probability,
    check_gamma,
    check_moments,
    check_tau,
)
from speed.privacy.composition import DEFAULT_MOMENTS, build_result
from speed.privacy.variance_gamma import vg_log_sf

__all__ = [
    "BOUNDS",
    "continuous_argmax_epsilon",
    "continuous_q",
    "lattice_epsilon",
    "lattice_log_pmf",
    "lattice_per_query_epsilon",
    "lattice_q_bound",
    "lattice_tail_probability",
    "log_q_lattice",
    "noise_bound_for",
]

BOUNDS = ("argmax", "histogram")
_MAX_TABLE = 1 << 23  # largest PMF table (entries) ever built
_LOG_TINY = 42.0  # relative truncation errors below e^{-42} ≈ 6e-19


def _check_resolution(resolution: Any) -> int:
    if isinstance(resolution, bool) or int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution P must be a positive integer, got {resolution!r}")
    return int(resolution)


def _check_scale(scale: Any) -> float:
    try:
        lam = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"noise scale λ must be a positive number, got {scale!r}") from None
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"noise scale λ must be a positive finite number, got {scale!r}")
    return lam


def _check_bound(bound: str) -> str:
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    return bound


# ------------------------------------------------------------------ exact PMF table
class _DiffNB:
    """Law of NB(s, p) − NB(s, p), θ = 1 − p = e^{log_theta}, as a scaled table."""

    def __init__(self, s: float, log_theta: float) -> None:
        if not (s > 0 and log_theta < 0):
            raise ValueError("internal: need s > 0 and θ < 1")
        self.s = float(s)
        self.log_theta = float(log_theta)
        self.theta = math.exp(log_theta)
        self.log_p = math.log(-math.expm1(log_theta))
        self.n = 0
        self.h = np.zeros(0)
        self.suffix = np.zeros(0)
        # terms of the correlation: k < n_u, θ^{2k} (k+1)^2 / (1 − θ²) below e^{-42}
        a = -2.0 * log_theta
        extra = _LOG_TINY - math.log(-math.expm1(-a))
        k = max(1, math.ceil(extra / a))
        while a * k - 2.0 * math.log(k + 1.0) < extra:
            k = math.ceil(k * 1.5) + 1
        self.n_u = k
        # margin beyond any index we answer for, so that suffix remainders are negligible
        b = -log_theta
        extra1 = _LOG_TINY - math.log(-math.expm1(-b))
        m = max(1, math.ceil(extra1 / b))
        while b * m - 2.0 * math.log(m + 1.0) < extra1:
            m = math.ceil(m * 1.5) + 1
        self.margin = m

    def ensure(self, last: int) -> None:
        """Make the table exact (to rounding) for indices 0..last."""
        need = int(last) + 1 + self.margin
        if need <= self.n:
            return
        if need > _MAX_TABLE:
            raise ValueError(
                f"lattice PMF table of {need} entries needed (limit {_MAX_TABLE}); "
                "use a smaller resolution or a smaller range"
            )
        n = max(need, min(2 * self.n, _MAX_TABLE))
        s, lt = self.s, self.log_theta
        k = np.arange(n + self.n_u, dtype=np.float64)
        log_b = special.gammaln(k + s) - special.gammaln(s) - special.gammaln(k + 1.0)
        u = np.exp(log_b[: self.n_u] + 2.0 * lt * k[: self.n_u])
        v = np.exp(log_b)
        h = signal.fftconvolve(v, u[::-1], mode="valid")[:n]
        # the FFT cannot produce anything below the first term b_0 θ^0 b_z = b_z
        h = np.maximum(h, v[:n])
        # remainder Σ_{z ≥ n} θ^{z−(n−1)} h(z) ≤ h(n−1) θρ/(1 − θρ), ρ = max(1, (n−1+s)/n)
        rho = max(1.0, (n - 1 + s) / n)
        rem = h[-1] * self.theta * rho / (1.0 - self.theta * rho)
        x = h[::-1].copy()
        x[0] += rem
        self.suffix = signal.lfilter([1.0], [1.0, -self.theta], x)[::-1]
        self.h = h
        self.n = n

    # -- all methods take integer numpy arrays and return float arrays
    def log_pmf(self, z: np.ndarray) -> np.ndarray:
        a = np.abs(np.asarray(z, dtype=np.int64))
        self.ensure(int(a.max(initial=0)))
        return 2.0 * self.s * self.log_p + a * self.log_theta + np.log(self.h[a])

    def _log_sf_pos(self, m: np.ndarray) -> np.ndarray:
        # log Pr[S ≥ m] for m ≥ 0 (scaled suffix sums)
        return 2.0 * self.s * self.log_p + m * self.log_theta + np.log(self.suffix[m])

    def log_sf(self, m: np.ndarray) -> np.ndarray:
        """log Pr[S ≥ m] for integer m (any sign)."""
        m = np.asarray(m, dtype=np.int64)
        self.ensure(int(np.abs(m).max(initial=0)) + 1)
        out = np.empty(m.shape)
        pos = m >= 1
        out[pos] = self._log_sf_pos(m[pos])
        neg = ~pos
        # Pr[S ≥ m] = 1 − Pr[S ≤ m − 1] = 1 − Pr[S ≥ 1 − m]   (symmetry)
        out[neg] = np.log1p(-np.exp(self._log_sf_pos(1 - m[neg])))
        return out

    def log_cdf(self, u: np.ndarray) -> np.ndarray:
        """log Pr[S ≤ u] = log Pr[S ≥ −u]."""
        return self.log_sf(-np.asarray(u, dtype=np.int64))


@functools.lru_cache(maxsize=64)
def _diff_nb(s: float, gamma: float, resolution: int) -> _DiffNB:
    return _DiffNB(s, -gamma / resolution)


def _tail_excess(a: float, length: int, s: float) -> float:
    """Σ_{w=a}^{a+length−1} log((w + 1)/(w + s)) (≥ 0 for s ≤ 1)."""
    return float(
        special.gammaln(a + length + 1.0)
        - special.gammaln(a + 1.0)
        - special.gammaln(a + length + s)
        + special.gammaln(a + s)
    )


# ---------------------------------------------------------------------- per-query ε
@functools.lru_cache(maxsize=1024)
def _lattice_eps(gamma: float, tau: float, resolution: int, bound: str) -> tuple[float, int]:
    """(ε_q, window Z0 used)."""
    if tau == 1.0:
        # geometric tails: both ratios equal θ^{−P} = e^{γ} exactly
        return 2.0 * gamma, 0
    P = resolution
    d = _diff_nb(tau, gamma, P)
    z0 = 32 * P
    limit = min(1024 * P, _MAX_TABLE - d.margin - P - 4)
    while True:
        if bound == "argmax":
            u = np.arange(-z0, z0 + 1, dtype=np.int64)
            inside = float(np.max(d.log_cdf(u + P) - d.log_cdf(u)))
            tail = gamma + _tail_excess(z0 - P, P, tau)  # u ≤ −z0
        else:
            z = np.arange(-z0, z0 + 1, dtype=np.int64)
            inside = float(np.max(np.abs(d.log_pmf(z) - d.log_pmf(z + P))))
            tail = gamma + _tail_excess(z0, P, tau)  # |z| ≥ z0 (mirror for negative z)
        if tail <= inside or 2 * z0 > limit or z0 >= limit:
            return 2.0 * max(inside, tail), z0
        z0 *= 2


def lattice_per_query_epsilon(gamma: float, tau: float, resolution: int,
                              bound: str = "argmax") -> float:
    """Rigorous pure ε of one answer with lattice noise (module docstring: both bounds)."""
    g, t = check_gamma(gamma), check_tau(tau)
    P, b = _check_resolution(resolution), _check_bound(bound)
    return _lattice_eps(g, t, P, b)[0]


def lattice_log_pmf(z: Any, scale: float, resolution: int, tau: float = 1.0) -> np.ndarray:
    """log Pr[S = z] for the sum S of τN lattice shares, z in lattice steps."""
    lam, P, t = _check_scale(scale), _check_resolution(resolution), check_tau(tau)
    zz = np.asarray(z)
    if not np.issubdtype(zz.dtype, np.integer):
        if not np.all(np.equal(np.mod(zz, 1), 0)):
            raise ValueError("lattice points z must be integers (lattice steps)")
        zz = zz.astype(np.int64)
    gamma = 1.0 / lam
    if t == 1.0:
        lt = -gamma / P
        return (math.log(-math.expm1(lt)) - math.log1p(math.exp(lt))) + np.abs(zz) * lt
    return _diff_nb(t, gamma, P).log_pmf(zz)


# --------------------------------------------------------------------------------- q
def log_q_lattice(counts: np.ndarray, gamma: float, tau: float, P: int,
                  eps_q: float, moments: int) -> np.ndarray:
    """log of the union bound per row of a checked (Q, K) count array (before min(q, 1))."""
    if not np.all(np.equal(np.mod(counts, 1), 0)):
        raise ValueError("the lattice mechanism needs integer vote counts")
    c = counts.astype(np.int64)
    rows = np.arange(c.shape[0])
    top = np.argmax(c, axis=1)
    gaps = c[rows, top][:, None] - c  # ≥ 0
    d = _diff_nb(2.0 * tau, gamma, P)
    # beyond `cap` steps q is so small that α(l) ≤ e^{-60}; use the (monotone) survival at
    # cap as a rigorous upper bound instead of building a huge table
    cap = int(math.ceil(P * (eps_q * moments + 60.0) / gamma)) + 1
    steps = np.minimum(gaps * P, cap)
    log_terms = d.log_sf(steps)
    log_terms[rows, top] = -np.inf
    return special.logsumexp(log_terms, axis=1)


def lattice_q_bound(counts: Any, gamma: float, tau: float, resolution: int) -> float:
    """Exact-PMF union bound on Pr[noisy argmax ≠ true argmax] for one query (length K)."""
    g, t, P = check_gamma(gamma), check_tau(tau), _check_resolution(resolution)
    arr = check_counts(counts, allow_2d=False)
    eps_q = _lattice_eps(g, t, P, "argmax")[0]
    return float(min(1.0, math.exp(log_q_lattice(arr, g, t, P, eps_q, DEFAULT_MOMENTS)[0])))


def lattice_epsilon(counts: Any, gamma: float, tau: float, delta: float, resolution: int,
                    moments: int = DEFAULT_MOMENTS, bound: str = "argmax", *,
                    failure_probability: float = 0.0) -> dict[str, Any]:
    """Same dict as :func:`speed.privacy.accountant.epsilon`, for the lattice mechanism.

    ``failure_probability`` β (per query: noise outside the circuit's range or a wrong
    bootstrap) is folded as in :func:`speed.privacy.composition.build_result`: into q when
    the per-query ε is histogram-level (τ = 1, where both bounds equal 2γ, or
    ``bound="histogram"``), else into δ.
    """
    g, t, d = check_gamma(gamma), check_tau(tau), check_delta(delta)
    P, L, b = _check_resolution(resolution), check_moments(moments), _check_bound(bound)
    beta = check_failure_probability(failure_probability)
    arr = check_counts(counts)
    q_count = arr.shape[0]
    eps_q = _lattice_eps(g, t, P, b)[0]
    log_q = np.minimum(log_q_lattice(arr, g, t, P, eps_q, L), 0.0) if q_count else None
    return build_result(eps_q, log_q, q_count, d, L, beta,
                        histogram_level=(t == 1.0 or b == "histogram"),
                        mechanism="lattice", resolution=P, bound=b)


# ------------------------------------------------------------- continuous P → ∞ limits
@functools.lru_cache(maxsize=256)
def _continuous_argmax(gamma: float, tau: float) -> float:
    def neg_ratio(u: float) -> float:
        # log F(u+1) − log F(u), F(v) = Pr[W_τ ≤ γ v] = Pr[W_τ > −γ v]
        return -(vg_log_sf(-gamma * (u + 1.0), tau) - vg_log_sf(-gamma * u, tau))

    grid = np.linspace(-4.0, 1.0, 501)
    vals = np.array([neg_ratio(u) for u in grid])
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    res = optimize.minimize_scalar(neg_ratio, bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-10})
    best = max(-float(res.fun), -float(vals[i]), gamma)
    return 2.0 * best


def continuous_argmax_epsilon(gamma: float, tau: float) -> float:
    """P → ∞ limit of the lattice argmax bound: 2 sup_u log F(u+1)/F(u), F the CDF of Z_τ.

    Reference value for convergence checks (the supremum is found numerically on u ∈ [−4, 1],
    where it lies for the parameters tested; for u → −∞ the ratio tends to γ).
    """
    g, t = check_gamma(gamma), check_tau(tau)
    if t == 1.0:
        return 2.0 * g
    return _continuous_argmax(g, t)


def continuous_q(counts: Any, gamma: float, tau: float) -> float:
    """Exact union bound Σ_j Pr[W_{2τ} > γ (n_{j*} − n_j)] for continuous noise (≤ the paper's q)."""
    g, t = check_gamma(gamma), check_tau(tau)
    arr = check_counts(counts, allow_2d=False)[0]
    top = int(np.argmax(arr))
    logs = [vg_log_sf(g * (arr[top] - arr[j]), 2.0 * t) for j in range(arr.size) if j != top]
    return float(min(1.0, math.exp(special.logsumexp(logs))))


# ------------------------------------------------------------- noise bound for the HE range
def _check_int_bound(bound: Any) -> int:
    if isinstance(bound, bool) or int(bound) != bound or bound < 0:
        raise ValueError(f"noise bound A must be a non-negative integer (lattice steps), got {bound!r}")
    return int(bound)


def lattice_tail_probability(bound: int, scale: float, resolution: int, tau: float = 1.0) -> float:
    """Pr[|S| > A] for the sum S of τN lattice shares (τ = 1: the discrete Laplace sum Z).

    ``bound`` A and S are in lattice steps (one vote = ``resolution`` steps).  For τ = 1 the
    closed form ``2 θ^{A+1} / (1 + θ)`` is used; for τ < 1 the exact PMF (or, beyond the
    largest table, the upper bound Pr[NB(τ) > A] ≤ θ^{A+1}).
    """
    A = _check_int_bound(bound)
    lam, P, t = _check_scale(scale), _check_resolution(resolution), check_tau(tau)
    lt = -1.0 / (lam * P)
    if t == 1.0:
        return float(min(1.0, math.exp(math.log(2.0) + (A + 1) * lt - math.log1p(math.exp(lt)))))
    d = _diff_nb(t, 1.0 / lam, P)
    if A + 2 + d.margin > _MAX_TABLE:
        return float(min(1.0, math.exp((A + 1) * lt)))
    return float(min(1.0, 2.0 * math.exp(d.log_sf(np.array([A + 1]))[0])))


def noise_bound_for(failure_probability: float, scale: float, resolution: int, *,
                    coordinates: int = 1) -> int:
    """Smallest A (lattice steps) with ``coordinates · Pr[|Z| > A] ≤ failure_probability``.

    Z is the full discrete-Laplace noise sum of one class count (all N shares: the range of
    the homomorphic circuit must hold it whatever the coalition).  Pass ``coordinates=K·Q``
    to cover every class of every query of a run with one union bound.
    """
    beta = float(failure_probability)
    if not (0.0 < beta < 1.0):
        raise ValueError(f"failure_probability must lie in (0, 1), got {failure_probability!r}")
    if isinstance(coordinates, bool) or int(coordinates) != coordinates or coordinates < 1:
        raise ValueError(f"coordinates must be a positive integer, got {coordinates!r}")
    lam, P = _check_scale(scale), _check_resolution(resolution)
    lt = -1.0 / (lam * P)

    def log_tail(a: int) -> float:  # log(coordinates · Pr[|Z| > a])
        return math.log(coordinates) + math.log(2.0) + (a + 1) * lt - math.log1p(math.exp(lt))

    target = math.log(beta)
    a = max(0, math.ceil((target - log_tail(0)) / lt))
    while a > 0 and log_tail(a - 1) <= target:
        a -= 1
    while log_tail(a) > target:
        a += 1
    return int(a)
