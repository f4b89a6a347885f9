"""Publishable (ε, δ) of the noisy histograms, by privacy loss distributions (PLDs).

Neighbouring relation: one holder's vote moves from class i to class j, i.e. one count
goes up by one vote and another down by one vote; the noise is independent per class.
The owner only ever sees data-independent quantities, so this histogram-release bound
(everything computed from the noisy counts, the argmax included, is post-processing) is
the ε that may be published (docs/privacy.md, "Publishable ε").

Per query and per coordinate, the privacy loss is that of ``π`` against ``π(· − s)``,
π the law of the sum of τN secret shares (:meth:`Mechanism.sum_log_pmf`) and s the shift
of one vote (1 for Skellam, P lattice steps for the lattice).  The PLD is built with
dp_accounting's rounding (``value_discretization_interval`` h, pessimistic by default:
each loss is rounded *up* to a multiple of h), from the exact PMF on a truncated
window z ∈ [−T, T]: the mass of the upper law outside the window (≤ e^{−45}) goes to the
PLD's infinite-loss mass, which only increases every hockey-stick divergence.  π(z − s)
is evaluated exactly also for z − s outside the window.  For symmetric laws the PLD of
(π, π(·−s)) equals that of (π(·−s), π) (reflection z ↦ s − z), so one PLD serves both
orders (``symmetric=False`` builds both; the tests check they agree).

Then: two coordinates per query (``self_compose(2)``), composition over the answered
queries (queries with different τ, e.g. after dropouts, compose their own PLDs), and ε
for the target δ (``get_epsilon_for_delta``).  The continuous Laplace mechanism at τ = 1
uses dp_accounting's Laplace PLD (the same as ``LaplaceDpEvent`` in ``PLDAccountant``);
its τ < 1 law has no exact discretisation here (rounding a density can only *lower* the
loss), so it is refused: use :class:`LatticeLaplace`, whose P → ∞ limit it is.

Cross-check: :func:`rdp_epsilon` sums the exact Rényi divergences
D_α(π ‖ π(·−s)) = (α−1)^{−1} log Σ_z π(z)^α π(z−s)^{1−α} over the coordinates and
queries and converts with ``dp_accounting.rdp.compute_epsilon`` (Mironov 2017;
Canonne, Kamath & Steinke 2020, Prop. 12).

Sources: Agarwal, Kairouz & Liu, "The Skellam Mechanism for Differentially Private
Federated Learning", NeurIPS 2021; Koskela et al. / Meiser & Mohammadi for PLD
composition as implemented in Google's dp_accounting (``pld.privacy_loss_distribution``).
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import special

from speed.errors import InputError
from speed.privacy.mechanisms import GammaLaplace, Mechanism, _tau

__all__ = [
    "DEFAULT_DISCRETIZATION",
    "DEFAULT_RDP_ORDERS",
    "composed_pld",
    "coordinate_pld",
    "epsilon_for_queries",
    "gaussian_epsilon",
    "per_query_pld",
    "publishable_epsilon",
    "rdp_epsilon",
    "renyi_divergence",
]

DEFAULT_DISCRETIZATION = 1e-5
DEFAULT_RDP_ORDERS = tuple([1.0 + x / 10.0 for x in range(1, 10)] + list(range(2, 20))
                           + [20, 24, 28, 32, 40, 48, 56, 64])
_RDP_LOG_TAIL = -200.0
_ROUNDING_SLACK = 1e-9  # in units of the discretisation step


def _pld_module():
    from dp_accounting.pld import privacy_loss_distribution

    return privacy_loss_distribution


def _check_h(h: Any) -> float:
    try:
        v = float(h)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and 0.0 < v <= 0.1):
        raise InputError(f"value_discretization_interval must lie in (0, 0.1], got {h!r}")
    return v


def _check_delta(delta: Any) -> float:
    try:
        d = float(delta)
    except (TypeError, ValueError):
        d = math.nan
    if not (0.0 < d < 1.0):
        raise InputError(f"delta must lie in the open interval (0, 1), got {delta!r}")
    return d


def _check_queries(num_queries: Any) -> int:
    if isinstance(num_queries, bool) or int(num_queries) != num_queries or num_queries < 0:
        raise InputError(f"num_queries must be a non-negative integer, got {num_queries!r}")
    return int(num_queries)


def _check_mechanism(mechanism: Any) -> Mechanism:
    if not isinstance(mechanism, Mechanism):
        raise InputError(f"expected a mechanism object (speed.privacy.mechanisms), got {mechanism!r}")
    return mechanism


# ------------------------------------------------------------------- per coordinate
def _rounded_pmf(log_upper: np.ndarray, log_lower: np.ndarray, h: float,
                 pessimistic: bool) -> dict[int, float]:
    """Vectorised ``from_two_probability_mass_functions`` rounding: loss → ⌈loss/h⌉ (or ⌊⌋)."""
    keep = np.isfinite(log_upper)
    lu, ll = log_upper[keep], log_lower[keep]
    if not np.all(np.isfinite(ll)):  # pragma: no cover (both laws have full support)
        raise RuntimeError("internal: shifted law vanishes where the law does not")
    loss = (lu - ll) / h
    # A loss computed as k·h up to rounding (e.g. γ/h for the discrete Laplace) must not be
    # pushed one whole step up (or down) by its last bit: ±1e−9 of a step (1e−14 in loss
    # for h = 1e−5) is below the float accuracy of the log-PMF differences themselves.
    idx = np.ceil(loss - _ROUNDING_SLACK) if pessimistic else np.floor(loss + _ROUNDING_SLACK)
    idx = idx.astype(np.int64)
    lo = int(idx.min())
    mass = np.bincount(idx - lo, weights=np.exp(lu))
    nz = np.nonzero(mass)[0]
    return {int(i) + lo: float(mass[i]) for i in nz}


@functools.lru_cache(maxsize=256)
def _coordinate_pld(mechanism: Mechanism, tau: float, h: float, pessimistic: bool,
                    symmetric: bool):
    pldm = _pld_module()
    if isinstance(mechanism, GammaLaplace):
        if tau != 1.0:
            raise InputError(
                "publishable ε of the continuous Gamma mechanism with τ < 1 is not supported "
                "(no exact discretisation of its density); use the 'lattice' mechanism, whose "
                "large-resolution limit it is")
        return pldm.from_laplace_mechanism(mechanism.scale, sensitivity=1.0,
                                           pessimistic_estimate=pessimistic,
                                           value_discretization_interval=h)
    z, log_upper, tail = mechanism.support(tau)
    s = mechanism.vote_step
    log_lower = mechanism.sum_log_pmf(z - s, tau)
    rounded = _rounded_pmf(log_upper, log_lower, h, pessimistic)
    infinity = float(tail) if pessimistic else 0.0
    if symmetric:
        return pldm.PrivacyLossDistribution.create_from_rounded_probability(
            rounded, infinity, h, pessimistic_estimate=pessimistic)
    # the other order: upper = π(· − s), lower = π, on the window shifted by s
    rounded_add = _rounded_pmf(log_lower, log_upper, h, pessimistic)
    return pldm.PrivacyLossDistribution.create_from_rounded_probability(
        rounded, infinity, h, pessimistic_estimate=pessimistic,
        rounded_probability_mass_function_add=rounded_add, infinity_mass_add=infinity,
        symmetric=False)


def coordinate_pld(mechanism: Mechanism, tau: float = 1.0, *,
                   value_discretization_interval: float = DEFAULT_DISCRETIZATION,
                   pessimistic: bool = True, symmetric: bool = True):
    """PLD of one class count moved by one vote (π vs π(· − s)), cached."""
    return _coordinate_pld(_check_mechanism(mechanism), _tau(tau),
                           _check_h(value_discretization_interval), bool(pessimistic),
                           bool(symmetric))


@functools.lru_cache(maxsize=256)
def _per_query_pld(mechanism: Mechanism, tau: float, h: float, pessimistic: bool, symmetric: bool):
    return _coordinate_pld(mechanism, tau, h, pessimistic, symmetric).self_compose(2)


def per_query_pld(mechanism: Mechanism, tau: float = 1.0, *,
                  value_discretization_interval: float = DEFAULT_DISCRETIZATION,
                  pessimistic: bool = True, symmetric: bool = True):
    """PLD of one answered query: two coordinates (+1 on one count, −1 on another), cached."""
    return _per_query_pld(_check_mechanism(mechanism), _tau(tau),
                          _check_h(value_discretization_interval), bool(pessimistic),
                          bool(symmetric))


@functools.lru_cache(maxsize=64)
def _self_composed(mechanism: Mechanism, tau: float, count: int, h: float, pessimistic: bool,
                   symmetric: bool):
    return _per_query_pld(mechanism, tau, h, pessimistic, symmetric).self_compose(count)


def composed_pld(mechanism: Mechanism, taus: Iterable[float], *,
                 value_discretization_interval: float = DEFAULT_DISCRETIZATION,
                 pessimistic: bool = True, symmetric: bool = True):
    """PLD of all the answered queries, one τ per query (None if there are none)."""
    mech = _check_mechanism(mechanism)
    h = _check_h(value_discretization_interval)
    counts = collections.Counter(_tau(t) for t in taus)
    total = None
    for t in sorted(counts):
        part = _self_composed(mech, t, counts[t], h, bool(pessimistic), bool(symmetric))
        total = part if total is None else total.compose(part)
    return total


def epsilon_for_queries(mechanism: Mechanism, taus: Sequence[float], delta: float, *,
                        value_discretization_interval: float = DEFAULT_DISCRETIZATION,
                        pessimistic: bool = True, symmetric: bool = True) -> float:
    """Publishable ε at ``delta`` for queries answered with the given τ (one per query).

    Queries with the same τ share one cached per-query PLD; different τ (dropouts) are
    composed.  No query costs nothing (ε = 0).
    """
    d = _check_delta(delta)
    pld = composed_pld(mechanism, list(taus), value_discretization_interval=value_discretization_interval,
                       pessimistic=pessimistic, symmetric=symmetric)
    if pld is None:
        return 0.0
    return float(pld.get_epsilon_for_delta(d))


def publishable_epsilon(mechanism: Mechanism, num_queries: int, delta: float, tau: float = 1.0, *,
                        value_discretization_interval: float = DEFAULT_DISCRETIZATION,
                        pessimistic: bool = True, symmetric: bool = True) -> float:
    """Publishable ε of ``num_queries`` noisy histograms, each protected by τN secret shares.

    Known answer: Skellam σ = 40, 500 queries, δ = 1e−5, τ = 1 → ε ≈ 3.346.
    """
    q = _check_queries(num_queries)
    return epsilon_for_queries(mechanism, [_tau(tau)] * q, delta,
                               value_discretization_interval=value_discretization_interval,
                               pessimistic=pessimistic, symmetric=symmetric)


# ------------------------------------------------------------------- Gaussian reference
def gaussian_epsilon(sigma: float, num_queries: int, delta: float, *,
                     value_discretization_interval: float = DEFAULT_DISCRETIZATION) -> float:
    """ε of the continuous Gaussian with the same σ: 2Q unit-sensitivity Gaussians
    (dp_accounting ``GaussianDpEvent`` in its PLD accountant); a reference only."""
    import dp_accounting

    s = float(sigma)
    q = _check_queries(num_queries)
    acc = dp_accounting.pld.PLDAccountant(
        value_discretization_interval=_check_h(value_discretization_interval))
    acc.compose(dp_accounting.GaussianDpEvent(s), 2 * q)
    return float(acc.get_epsilon(_check_delta(delta)))


# ---------------------------------------------------------------------- RDP cross-check
@functools.lru_cache(maxsize=256)
def _rdp_support(mechanism: Mechanism, tau: float):
    z, log_upper, _tail = mechanism.support(tau, log_tail=_RDP_LOG_TAIL)
    log_lower = mechanism.sum_log_pmf(z - mechanism.vote_step, tau)
    keep = np.isfinite(log_upper) & np.isfinite(log_lower)
    return log_upper[keep], log_lower[keep]


def renyi_divergence(mechanism: Mechanism, order: float, tau: float = 1.0) -> float:
    """D_α(π ‖ π(· − s)) of one coordinate, summed exactly over the window |z| ≤ T
    (two-sided tail of π below e^{−200}); the continuous Laplace uses its closed form."""
    mech, t, a = _check_mechanism(mechanism), _tau(tau), float(order)
    if not a > 1.0:
        raise InputError(f"Rényi order must be > 1, got {order!r}")
    if isinstance(mech, GammaLaplace):
        if t != 1.0:
            raise InputError("Rényi divergence of the continuous Gamma mechanism needs τ = 1")
        from dp_accounting.rdp.rdp_privacy_accountant import _laplace_rdp

        return float(_laplace_rdp(mech.gamma, a))
    lu, ll = _rdp_support(mech, t)
    return float(special.logsumexp(a * lu + (1.0 - a) * ll) / (a - 1.0))


def rdp_epsilon(mechanism: Mechanism, num_queries: int, delta: float, tau: float = 1.0, *,
                orders: Sequence[float] = DEFAULT_RDP_ORDERS, taus: Sequence[float] | None = None) -> float:
    """ε from exact Rényi divergences (cross-check of the PLD value; never smaller than it
    up to discretisation).  ``taus`` (one per query) overrides ``num_queries``/``tau``."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    d = _check_delta(delta)
    if taus is None:
        taus = [_tau(tau)] * _check_queries(num_queries)
    counts = collections.Counter(_tau(t) for t in taus)
    if not counts:
        return 0.0
    rdp = [sum(2.0 * n * renyi_divergence(mechanism, a, t) for t, n in counts.items()) for a in orders]
    eps, _order = compute_epsilon(list(orders), rdp, d)
    return float(eps)
