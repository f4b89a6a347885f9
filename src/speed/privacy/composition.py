"""Composition of per-query ε over a run: PATE's moments accountant, capped by basic composition,
and the result dict both accountants (:mod:`speed.privacy.accountant`, :mod:`speed.privacy.lattice`)
return.

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

import math
from typing import Any

import numpy as np

from speed.privacy.checks import check_delta, check_moments

__all__ = ["DEFAULT_MOMENTS", "build_result", "delta_total", "moments_accountant", "moments_alpha"]

DEFAULT_MOMENTS = 25

_PUBLISH_NOTE = (
    "data_independent may be published; data_dependent depends on the private votes and "
    "must not be published without smooth-sensitivity sanitisation (Papernot et al., PATE 2018)"
)


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
