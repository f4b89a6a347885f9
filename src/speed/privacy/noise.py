"""Distributed differential-privacy noise shares (SPEC §3 and §3b).

Two families of shares, both summing *exactly* over the N holders:

* Continuous (the paper's): η = G − G', G, G' i.i.d. Gamma(shape 1/N, scale λ).
  Gamma shapes add with a common scale, so Σ_{i=1..N} η_i ~ Laplace(0, λ).
  Used by clear-text simulation only.
* Lattice-native (what the encrypted pipeline uses): η = X − Y, X, Y i.i.d.
  NegativeBinomial(r = 1/N, p = 1 − e^{−1/(λP)}) counted in steps of 1/P vote
  (numpy's ``negative_binomial(n, p)``: failures before n successes, success
  probability p, so P(k) ∝ (1 − p)^k = e^{−k/(λP)}).  Negative binomials with a
  common p add their r, so the N shares sum to Geometric − Geometric, the discrete
  Laplace law P(z) ∝ e^{−|z|/(λP)}.

Randomness: ``rng=None`` is production mode: uniforms come from the operating
system's CSPRNG (``os.urandom``) and are turned into samples by inverse-CDF with
scipy's quantile functions.  Passing a ``numpy.random.Generator`` is seeded
experiment mode (reproducible, NOT for production); :func:`holder_generators`
gives each holder an independent stream via ``SeedSequence.spawn``.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

__all__ = [
    "holder_generators",
    "lattice_success_probability",
    "os_uniform",
    "sample_lattice_shares",
    "sample_shares",
]


def _check_common(num_holders: int, num_classes: int, scale: float) -> None:
    if int(num_holders) != num_holders or num_holders < 1:
        raise ValueError(f"num_holders must be a positive integer, got {num_holders!r}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"noise scale λ must be a positive finite number, got {scale!r}")


def os_uniform(size: int | tuple[int, ...]) -> np.ndarray:
    """Uniform floats in the open interval (0, 1) from the OS CSPRNG (53 random bits each)."""
    shape = (size,) if isinstance(size, int) else tuple(size)
    count = int(np.prod(shape)) if shape else 1
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)
    return ((words.astype(np.float64) + 0.5) * 2.0**-53).reshape(shape)


def holder_generators(seed: int, num_holders: int) -> list[np.random.Generator]:
    """Independent seeded streams, one per holder (experiments only, not for production)."""
    children = np.random.SeedSequence(seed).spawn(num_holders)
    return [np.random.Generator(np.random.PCG64(child)) for child in children]


def sample_shares(
    num_holders: int,
    num_classes: int,
    scale: float,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Continuous shares, shape (num_holders, num_classes): Gamma(1/N, λ) − Gamma(1/N, λ).

    Σ over holders ~ Laplace(0, λ) per class (SPEC §3).  ``rng=None`` draws from the OS CSPRNG.
    """
    _check_common(num_holders, num_classes, scale)
    shape = (num_holders, num_classes)
    a = 1.0 / num_holders
    if rng is None:
        g1 = stats.gamma.ppf(os_uniform(shape), a, scale=scale)
        g2 = stats.gamma.ppf(os_uniform(shape), a, scale=scale)
    else:
        g1 = rng.gamma(a, scale, size=shape)
        g2 = rng.gamma(a, scale, size=shape)
    return g1 - g2


def lattice_success_probability(scale: float, resolution: int) -> float:
    """SPEC §3b's p = 1 − e^{−1/(λP)}, numpy's/scipy's NB success probability."""
    return float(-np.expm1(-1.0 / (scale * resolution)))


def sample_lattice_shares(
    num_holders: int,
    num_classes: int,
    scale: float,
    resolution: int = 1,
    rng: np.random.Generator | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """Integer lattice shares in steps of 1/resolution vote (SPEC §3b).

    Each entry is X − Y with X, Y i.i.d. NegativeBinomial(r = 1/num_holders,
    p = 1 − e^{−1/(λP)}); the sum of ``num_holders`` shares is
    discrete Laplace, P(z) ∝ e^{−|z|/(λP)}.

    Returns shape (rows, num_classes), rows defaulting to num_holders.  A single holder
    drawing its own share for one query calls it with ``rows=1``.
    """
    _check_common(num_holders, num_classes, scale)
    if int(resolution) != resolution or resolution < 1:
        raise ValueError(f"resolution P must be a positive integer, got {resolution!r}")
    shape = (num_holders if rows is None else int(rows), num_classes)
    r = 1.0 / num_holders
    success = lattice_success_probability(scale, resolution)
    if rng is None:
        x = stats.nbinom.ppf(os_uniform(shape), r, success)
        y = stats.nbinom.ppf(os_uniform(shape), r, success)
    else:
        x = rng.negative_binomial(r, success, size=shape)
        y = rng.negative_binomial(r, success, size=shape)
    return (np.asarray(x, dtype=np.int64) - np.asarray(y, dtype=np.int64))
