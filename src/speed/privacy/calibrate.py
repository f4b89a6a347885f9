"""Calibration: the least noise whose publishable ε meets a target (like Opacus' get_noise_multiplier).

``calibrate("skellam", target_epsilon, num_queries, delta, tau)`` returns the Skellam
mechanism with the smallest σ (to a relative tolerance) whose PLD ε
(:func:`speed.privacy.pld.publishable_epsilon`) is ≤ the target, and that ε.  For the
Laplace mechanisms (``"lattice"``, ``"gamma"``) the searched parameter is the noise scale
λ = 1/γ: the result is the *largest* γ meeting the target.  ε decreases as the noise
grows, so a bisection on log(noise) between a bracket [too little, enough] converges; the
returned value is always the "enough" end, so its ε is ≤ the target by construction.
"""

from __future__ import annotations

import math
from typing import Any

from scipy import optimize, stats

from speed.errors import InputError
from speed.privacy import pld as _pld
from speed.privacy.mechanisms import Mechanism, _tau, mechanism_from_name

__all__ = ["NOISE_RANGE", "calibrate"]

NOISE_RANGE = (1e-2, 1e4)  # σ (Skellam) or λ = 1/γ (Laplace) searched in this range


def _gaussian_guess(target: float, num_queries: int, delta: float, tau: float) -> float:
    """σ of the Gaussian with the same (ε, δ) over 2Q unit-sensitivity coordinates
    (analytic Gaussian mechanism, Balle & Wang 2018), scaled by 1/√τ: a starting point."""
    def excess_delta(mu: float) -> float:
        a = float(stats.norm.logcdf(-target / mu + mu / 2))
        b = float(stats.norm.logcdf(-target / mu - mu / 2))
        return math.exp(a) - math.exp(min(700.0, target + b)) - delta

    try:
        mu = optimize.brentq(excess_delta, 1e-6, 100.0)
    except (ValueError, OverflowError):
        return 10.0
    # μ-GDP of 2Q coordinates with noise σ√τ: μ = √(2Q) / (σ √τ)
    return math.sqrt(2.0 * num_queries) / (mu * math.sqrt(tau))


def calibrate(mechanism_name: str, target_epsilon: float, num_queries: int, delta: float,
              tau: float = 1.0, *, rtol: float = 1e-3,
              value_discretization_interval: float = _pld.DEFAULT_DISCRETIZATION,
              **fixed: Any) -> tuple[Mechanism, float]:
    """Least noise with publishable ε ≤ ``target_epsilon``; returns (mechanism, its ε).

    ``fixed`` holds the other parameters (``resolution=P`` for the lattice).  The noise
    parameter is found to relative tolerance ``rtol`` on a log scale; a target that no
    noise in :data:`NOISE_RANGE` reaches raises :class:`speed.errors.InputError`.
    """
    name = str(mechanism_name).strip().lower()
    try:
        target = float(target_epsilon)
    except (TypeError, ValueError):
        target = math.nan
    if not (math.isfinite(target) and target > 0):
        raise InputError(f"target_epsilon must be a positive finite number, got {target_epsilon!r}")
    q = _pld._check_queries(num_queries)
    if q == 0:
        raise InputError("num_queries must be at least 1 to calibrate noise")
    d = _pld._check_delta(delta)
    t = _tau(tau)
    if not (0.0 < float(rtol) < 1.0):
        raise InputError(f"rtol must lie in (0, 1), got {rtol!r}")
    h = _pld._check_h(value_discretization_interval)

    if name == "skellam":
        def make(noise: float) -> Mechanism:
            return mechanism_from_name(name, sigma=noise, **fixed)
        guess = _gaussian_guess(target, q, d, t)
    elif name in ("lattice", "gamma", "laplace"):
        def make(noise: float) -> Mechanism:
            return mechanism_from_name(name, gamma=1.0 / noise, **fixed)
        # Laplace(λ) has variance 2λ²: start from the Gaussian with that σ
        guess = _gaussian_guess(target, q, d, t) / math.sqrt(2.0)
    else:
        mechanism_from_name(name, **fixed)  # raises the registry's one-line error
        raise InputError(f"cannot calibrate mechanism {mechanism_name!r}")  # pragma: no cover

    cache: dict[float, float] = {}

    def eps(noise: float) -> float:
        if noise not in cache:
            cache[noise] = _pld.publishable_epsilon(make(noise), q, d, t,
                                                    value_discretization_interval=h)
        return cache[noise]

    lo_lim, hi_lim = NOISE_RANGE
    guess = min(max(guess, lo_lim), hi_lim)
    # bracket: lo too little noise (ε > target), hi enough (ε ≤ target)
    step = 1.15
    if eps(guess) <= target:
        hi, lo = guess, max(guess / step, lo_lim)
        while eps(lo) <= target:
            if lo <= lo_lim:
                raise InputError(f"target ε = {target:g} is met by every {name} noise down to "
                                 f"{lo_lim:g}; nothing to calibrate")
            hi, lo = lo, max(lo / step, lo_lim)
            step *= step
    else:
        lo, hi = guess, min(guess * step, hi_lim)
        while eps(hi) > target:
            if hi >= hi_lim:
                raise InputError(f"target ε = {target:g} at δ = {d:g} over {q} queries (τ = {t:g}) "
                                 f"is out of reach for {name} noise up to {hi_lim:g}")
            lo, hi = hi, min(hi * step, hi_lim)
            step *= step
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target:
            hi = mid
        else:
            lo = mid
    return make(hi), eps(hi)
