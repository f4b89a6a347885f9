"""Distributed differential-privacy noise shares (docs/spec.md §3 and §3b).

Three families of shares, all summing *exactly* over the N holders:

* Continuous (the paper's): η = G − G', G, G' i.i.d. Gamma(shape 1/N, scale λ).
  Gamma shapes add with a common scale, so Σ_{i=1..N} η_i ~ Laplace(0, λ).
  Used by clear-text simulation only.
* Lattice-native (what the encrypted pipeline uses): η = X − Y, X, Y i.i.d.
  NegativeBinomial(r = 1/N, p = 1 − e^{−1/(λP)}) counted in steps of 1/P vote
  (numpy's ``negative_binomial(n, p)``: failures before n successes, success
  probability p, so P(k) ∝ (1 − p)^k = e^{−k/(λP)}).  Negative binomials with a
  common p add their r, so the N shares sum to Geometric − Geometric, the discrete
  Laplace law P(z) ∝ e^{−|z|/(λP)}.
* Distributed Skellam (Agarwal, Kairouz & Liu, "The Skellam Mechanism for
  Differentially Private Federated Learning", NeurIPS 2021): η = X − Y, X, Y i.i.d.
  Poisson(σ²/(2N)) integers.  Poisson means add, so the N shares of one class sum to a
  Skellam law of variance σ², and any τN of them to a Skellam of variance τσ²
  (:func:`sample_skellam_shares`, docs/privacy.md "Publishable ε").

Randomness: ``rng=None`` is production mode: randomness comes from the operating
system's CSPRNG (``os.urandom``) and is turned into samples by inversion with scipy's
quantile functions (Poisson: tables of scipy's regularised incomplete gamma
``pdtr``/``pdtrc``, relative-accurate in both tails, :func:`os_poisson`). The inversion
is *two-sided*: a fair bit picks the lower or upper half and ``V`` uniform on (0, 1/2]
is drawn with full floating-point relative precision (random exponent + 52-bit mantissa,
:func:`os_half_uniform`), then the sample is ``ppf(V)`` or ``isf(V)``. Every value,
however far in a tail, is thus drawn with probability correct to ~1e−15 *relative* error
(scipy's incomplete gamma/beta inverses), instead of the absolute 2^−53 granularity of
``ppf(U)`` that would silently cut the noise's tails (and its DP guarantee). Passing a
``numpy.random.Generator`` is seeded experiment mode (reproducible, NOT for production);
:func:`holder_generators` gives each holder an independent stream via
``SeedSequence.spawn``.

Range of the encrypted circuit: no holder can clip the noise (each sees only its own
share), so the circuit's range must hold the whole sum.  Choose the noise bound A with
:func:`speed.privacy.lattice.noise_bound_for` (A ≈ λP·ln(2KQ/β) lattice steps for
failure probability β over K classes and Q queries); beyond A the encoded counts wrap
around.  The histogram-level DP bound still holds (the output is a function of the noisy
counts), the tighter argmax bound and the label's correctness only up to β, which the
owner's ledger folds into δ (docs/privacy.md).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
from scipy import special, stats

__all__ = [
    "holder_generators",
    "lattice_success_probability",
    "os_half_uniform",
    "os_poisson",
    "os_uniform",
    "sample_lattice_shares",
    "sample_shares",
    "sample_skellam_shares",
]


def _check_common(num_holders: int, num_classes: int, scale: float) -> None:
    if int(num_holders) != num_holders or num_holders < 1:
        raise ValueError(f"num_holders must be a positive integer, got {num_holders!r}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"noise scale λ must be a positive finite number, got {scale!r}")


def _check_rows(rows) -> int:
    if isinstance(rows, bool) or int(rows) != rows or rows < 1:
        raise ValueError(f"rows must be a positive integer, got {rows!r}")
    return int(rows)


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
    rows: int | None = None,
) -> np.ndarray:
    """Continuous shares, shape (num_holders, num_classes): Gamma(1/N, λ) − Gamma(1/N, λ).

    Σ over holders ~ Laplace(0, λ) per class (docs/spec.md §3).  ``rng=None`` draws from the OS CSPRNG.
    ``rows`` (default num_holders) draws that many holders' shares, e.g. ``rows=1`` for
    one holder's own share.
    """
    _check_common(num_holders, num_classes, scale)
    shape = (num_holders if rows is None else _check_rows(rows), num_classes)
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
    """docs/spec.md §3b's p = 1 − e^{−1/(λP)}, numpy's/scipy's NB success probability."""
    return float(-np.expm1(-1.0 / (scale * resolution)))


def sample_lattice_shares(
    num_holders: int,
    num_classes: int,
    scale: float,
    resolution: int = 1,
    rng: np.random.Generator | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """Integer lattice shares in steps of 1/resolution vote (docs/spec.md §3b).

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


# ------------------------------------------------------------------ Skellam shares
_POISSON_MAX_MEAN = 1e6  # per-holder means are a few units; refuse absurd tables


@functools.lru_cache(maxsize=32)
def _poisson_tables(mu: float) -> tuple[np.ndarray, np.ndarray]:
    """CDF(k) = Pr[X ≤ k] and SF(k) = Pr[X > k] for k = 0..n−1, SF(n−1) = 0 in float64.

    scipy's ``pdtr``/``pdtrc`` (regularised incomplete gamma) are accurate to ~1e−15
    *relative* error in both tails, down to the smallest subnormal.
    """
    n = int(mu + 40.0 * math.sqrt(mu + 1.0) + 800.0)
    while True:
        k = np.arange(n, dtype=np.float64)
        sf = special.pdtrc(k, mu)
        if sf[-1] == 0.0:
            break
        n *= 2  # pragma: no cover (the first table always reaches the underflow)
    cdf = np.maximum.accumulate(special.pdtr(k, mu))
    sf = np.minimum.accumulate(sf)
    cdf.setflags(write=False)  # cached: shared by every call with this mean
    sf.setflags(write=False)
    return cdf, sf


def os_poisson(mu: float, size: int | tuple[int, ...]) -> np.ndarray:
    """Poisson(mu) integers from the OS CSPRNG by exact two-sided inversion of the CDF.

    A fair bit picks the half; V uniform on (0, 1/2] with full relative precision
    (:func:`os_half_uniform`); the sample is the smallest k with CDF(k) ≥ V (lower half)
    or with Pr[X > k] ≤ V (upper half).  This equals ``ppf(U)`` for U uniform on (0, 1),
    but both tails keep their exact probabilities down to ~1e−308 (scipy's generic
    ``poisson.isf`` would compute ``ppf(1 − V)`` and cut the upper tail at ~1e−16).
    """
    mu = float(mu)
    if not (math.isfinite(mu) and 0.0 < mu <= _POISSON_MAX_MEAN):
        raise ValueError(f"Poisson mean must lie in (0, {_POISSON_MAX_MEAN:g}], got {mu!r}")
    shape, count = _shape_of(size)
    cdf, sf = _poisson_tables(mu)
    v = os_half_uniform(count)
    upper = _os_bits(count)
    low = np.searchsorted(cdf, v, side="left")
    # SF is non-increasing: the entries ≤ V are the last `c` ones, the smallest such k is n − c
    high = sf.size - np.searchsorted(sf[::-1], v, side="right")
    return np.where(upper, high, low).astype(np.int64).reshape(shape)


def _check_sigma(sigma) -> float:
    from speed.errors import InputError

    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise InputError(f"Skellam noise σ must be a positive number, got {sigma!r}") from None
    if isinstance(sigma, bool) or not (math.isfinite(s) and s > 0):
        raise InputError(f"Skellam noise σ must be a positive finite number, got {sigma!r}")
    return s


def sample_skellam_shares(
    num_holders: int,
    num_classes: int,
    sigma: float,
    rng: np.random.Generator | list[np.random.Generator] | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """Distributed Skellam shares, int64 array of shape (rows, num_classes).

    Holder i adds to each class X − Y with X, Y i.i.d. Poisson(σ²/(2N)), N =
    ``num_holders`` (Agarwal, Kairouz & Liu, NeurIPS 2021).  The N shares of a class sum
    to Skellam(σ²/2, σ²/2) (variance σ²); any τN of them to a Skellam of variance τσ².

    ``rows`` defaults to num_holders (``rows=1``: one holder's own share).  ``rng``:

    * ``None`` — production mode: OS CSPRNG, exact inversion (:func:`os_poisson`);
    * a ``numpy.random.Generator`` — seeded experiment mode (NOT for production);
    * a list of generators (:func:`holder_generators`), one per row — seeded mode with an
      independent stream per holder; its length must equal ``rows``.
    """
    _check_common(num_holders, num_classes, 1.0)
    s = _check_sigma(sigma)
    n_rows = num_holders if rows is None else _check_rows(rows)
    mu = s * s / (2.0 * num_holders)
    shape = (n_rows, int(num_classes))
    if rng is None:
        x = os_poisson(mu, shape)
        y = os_poisson(mu, shape)
    elif isinstance(rng, (list, tuple)):
        if len(rng) != n_rows:
            raise ValueError(f"got {len(rng)} generators for {n_rows} rows of shares "
                             "(one per holder)")
        pair = np.stack([g.poisson(mu, size=(2, shape[1])) for g in rng])  # (rows, 2, K)
        x, y = pair[:, 0, :], pair[:, 1, :]
    else:
        x = rng.poisson(mu, size=shape)
        y = rng.poisson(mu, size=shape)
    return np.asarray(x, dtype=np.int64) - np.asarray(y, dtype=np.int64)
