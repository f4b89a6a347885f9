"""Checks of the accountants' public parameters: γ = 1/λ, τ, δ, the number of moments, vote
counts, the per-query failure probability β and the mechanism name.

Each returns the value as the accountants use it (a float, an int, a (Q, K) float array) or
raises :class:`ValueError` naming the parameter.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "MECHANISMS",
    "check_counts",
    "check_delta",
    "check_failure_probability",
    "check_gamma",
    "check_mechanism",
    "check_moments",
    "check_tau",
    "require_resolution",
]

MECHANISMS = ("gamma", "lattice")


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


def check_mechanism(mechanism: str, resolution: int | None) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
    if mechanism == "gamma" and resolution is not None:
        raise ValueError(
            "resolution is only meaningful with mechanism='lattice' (the continuous 'gamma' "
            "mechanism has no lattice)"
        )


def require_resolution(resolution: int | None) -> int:
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
