"""SPEED's privacy accountant for the continuous (Gamma-difference) noise (docs/spec.md §3–§4).

Everything here is a pure function of public parameters (γ = 1/λ, τ, δ, the number of
moments) and, for the data-dependent bound only, of the vote counts.  The noise law W_s is
that of :mod:`speed.privacy.variance_gamma`; the composition over queries is
:mod:`speed.privacy.composition`'s; ``mechanism="lattice"`` hands over to
:mod:`speed.privacy.lattice`.

Per-query ε (docs/spec.md §4, the paper's analysis), F the CDF of Z_τ in vote units
(F(t) = Pr[W_τ ≤ γ t]), ``g(t) = (1 − F(t)) / (1 − F(t + 2))``:

* ε₁ = ln(1 + (F(1) − F(−1)) / (1 − F(2)))
* ε₂ = ln(g(0) − g'(0)) (τ > 1/2 only: needs f(0) < ∞)
* ε_q = min(ε₁, ε₂) for τ > 1/2, ε₁ otherwise; τ = 1 gives exactly 2γ.

Data-dependent q (docs/spec.md §4): the paper's closed-form bound on
``Pr[W_{2τ} > Δ]`` summed over the runner-ups, then ``min(q, 1 − 1/K)``.

Then the moments accountant (PATE 2017, Theorems 2 and 3) over the queries, capped by basic
composition (:mod:`speed.privacy.composition`).  The parameter checks, the variance-gamma law and
the composition are re-exported here under their old names.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from scipy import special

from speed.privacy.checks import (
    MECHANISMS,
    check_counts,
    check_delta,
    check_failure_probability,
    check_gamma,
    check_mechanism,
    check_moments,
    check_tau,
    require_resolution,
)
from speed.privacy.composition import DEFAULT_MOMENTS, build_result, delta_total, moments_accountant, moments_alpha
from speed.privacy.lattice import lattice_epsilon, lattice_q_bound
from speed.privacy.variance_gamma import central_mass, log_tail, pdf_at_zero, scaled_pdf, vg_cdf, vg_log_sf, vg_pdf

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


# ----------------------------------------------------------------- per-query ε
@functools.lru_cache(maxsize=4096)
def _per_query_parts(gamma: float, tau: float) -> tuple[float, float]:
    # Everything in unit scale: F(t) = Pr[W_τ ≤ γ t].
    log_t2 = log_tail(2.0 * gamma, tau)  # log(1 − F(2))
    central = central_mass(gamma, tau)  # F(1) − F(−1)
    eps1 = float(np.logaddexp(log_t2, math.log(central)) - log_t2) if central > 0 else 0.0
    if tau <= 0.5:
        return eps1, math.inf
    # ε₂ = ln(g(0) − g'(0)) with, in vote units, 1 − F(0) = ½, T2 = 1 − F(2),
    # f(t) = γ f_W(γ t):  g(0) − g'(0) = [½ T2 − γ(½ f_W(2γ) − T2 f_W(0))] / T2².
    # With T2 = e^{−2γ} t̃ and f_W(2γ) = e^{−2γ} f̃(2γ) this is
    # e^{2γ} [½ t̃ − ½ γ f̃(2γ) + γ t̃ f_W(0)] / t̃²: no exponential of γ is ever formed.
    t_scaled = math.exp(log_t2 + 2.0 * gamma)  # t̃
    f2_scaled = float(scaled_pdf(2.0 * gamma, tau))  # f̃_W(2γ)
    f0 = pdf_at_zero(tau)
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
        return lattice_q_bound(arr[0], g, t, require_resolution(resolution))
    check_mechanism(mechanism, resolution)
    k = arr.shape[1]
    return float(min(math.exp(log_q_bound_gamma(arr, g, t)[0]), 1.0 - 1.0 / k))


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
    per-query ``failure_probability`` folded in, see :func:`speed.privacy.composition.build_result`), ``moments``,
    ``mechanism``, ``resolution``, ``publishable`` and ``note``.
    ``mechanism="lattice"`` (with ``resolution=P``) uses the lattice accountant of
    :mod:`speed.privacy.lattice`.
    """
    g, t, d, L = check_gamma(gamma), check_tau(tau), check_delta(delta), check_moments(moments)
    beta = check_failure_probability(failure_probability)
    arr = check_counts(counts)
    if mechanism == "lattice":
        return lattice_epsilon(arr, g, t, d, require_resolution(resolution), moments=L,
                               failure_probability=beta)
    check_mechanism(mechanism, resolution)
    q_count, k = arr.shape
    eps_q = per_query_epsilon(g, t)
    log_q = np.minimum(log_q_bound_gamma(arr, g, t), math.log1p(-1.0 / k)) if q_count else None
    return build_result(eps_q, log_q, q_count, d, L, beta, histogram_level=(t == 1.0),
                        mechanism="gamma", resolution=None)
