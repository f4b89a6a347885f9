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

Randomness: ``rng=None`` is production mode: randomness comes from the operating
system's CSPRNG (``os.urandom``) and is turned into samples by inversion with scipy's
quantile functions.  The inversion is *two-sided*: a fair bit picks the lower or upper
half and ``V`` uniform on (0, 1/2] is drawn with full floating-point relative precision
(random exponent + 52-bit mantissa, :func:`os_half_uniform`), then the sample is
``ppf(V)`` or ``isf(V)``.  Every value, however far in a tail, is thus drawn with
probability correct to ~1e−15 *relative* error (scipy's incomplete gamma/beta
inverses), instead of the absolute 2^−53 granularity of ``ppf(U)`` that would silently
cut the noise's tails (and its DP guarantee).  Passing a ``numpy.random.Generator`` is
seeded experiment mode (reproducible, NOT for production); :func:`holder_generators`
gives each holder an independent stream via ``SeedSequence.spawn``.

Range of the encrypted circuit: no holder can clip the noise (each sees only its own
share), so the circuit's range must hold the whole sum.  Choose the noise bound A with
:func:`speed.privacy.lattice.noise_bound_for` (A ≈ λP·ln(2KQ/β) lattice steps for
failure probability β over K classes and Q queries); beyond A the encoded counts wrap
around.  The histogram-level DP bound still holds (the output is a function of the noisy
counts), the tighter argmax bound and the label's correctness only up to β, which the
owner's ledger folds into δ (docs/privacy.md).
"""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

__all__ = [
    "holder_generators",
    "lattice_success_probability",
    "os_half_uniform",
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


def _shape_of(size: int | tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    shape = (int(size),) if np.ndim(size) == 0 else tuple(int(x) for x in size)
    return shape, (int(np.prod(shape)) if shape else 1)


def os_uniform(size: int | tuple[int, ...]) -> np.ndarray:
    """Uniform floats in the open interval (0, 1) from the OS CSPRNG (52 random bits each).

    ``(w + 1/2) 2^−52`` with w < 2^52 is exact in float64, so 0 and 1 never occur.
    """
    shape, count = _shape_of(size)
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(12)
    return ((words.astype(np.float64) + 0.5) * 2.0**-52).reshape(shape)


def os_half_uniform(size: int | tuple[int, ...]) -> np.ndarray:
    """Uniform on (0, 1/2] with full relative precision near 0, from the OS CSPRNG.

    V = 2^{−2−J} (1 + M 2^{−52}) with J the number of leading zero bits of a random bit
    string (Pr[J = j] = 2^{−j−1}) and M a uniform 52-bit mantissa: each binade
    [2^{−2−j}, 2^{−1−j}) gets its exact probability and 2^52 equally likely points.
    """
    shape, count = _shape_of(size)
    zeros = np.zeros(count, dtype=np.int64)
    todo = np.arange(count)
    while todo.size:
        words = np.frombuffer(os.urandom(8 * todo.size), dtype=np.uint64) >> np.uint64(11)
        # 53 random bits, exact as float64; frexp gives the top set bit's position
        _, expo = np.frexp(words.astype(np.float64))
        empty = words == 0
        zeros[todo] += np.where(empty, 53, 53 - expo)
        todo = todo[empty & (zeros[todo] < 1070)]
    zeros = np.minimum(zeros, 1070)
    mant = np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(12)
    v = np.ldexp(1.0 + mant.astype(np.float64) * 2.0**-52, (-2 - zeros).astype(np.int32))
    return v.reshape(shape)


def _os_bits(count: int) -> np.ndarray:
    return (np.frombuffer(os.urandom(count), dtype=np.uint8) & 1).astype(bool)


def _os_inverse(dist, shape: tuple[int, ...]) -> np.ndarray:
    """Two-sided inversion: X = ppf(V) or isf(V) with a fair bit (module docstring)."""
    count = int(np.prod(shape)) if shape else 1
    v = os_half_uniform(count)
    upper = _os_bits(count)
    out = np.where(upper, dist.isf(v), dist.ppf(v))
    return out.reshape(shape)


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
        dist = stats.gamma(a, scale=scale)
        g1 = _os_inverse(dist, shape)
        g2 = _os_inverse(dist, shape)
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
        dist = stats.nbinom(r, success)
        x = _os_inverse(dist, shape)
        y = _os_inverse(dist, shape)
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):  # pragma: no cover
            raise RuntimeError("lattice share sampler produced a non-finite value")
    else:
        x = rng.negative_binomial(r, success, size=shape)
        y = rng.negative_binomial(r, success, size=shape)
    return (np.asarray(x, dtype=np.int64) - np.asarray(y, dtype=np.int64))
