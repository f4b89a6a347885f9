"""Distributed Skellam shares (Agarwal, Kairouz & Liu, NeurIPS 2021): laws of their sums.

Every goodness-of-fit test is paired with the same test against a wrong σ (or mean), which
must reject: the tests can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from speed.errors import InputError
from speed.privacy.noise import (
    _poisson_tables,
    holder_generators,
    os_poisson,
    sample_skellam_shares,
)

N = 250
ACCEPT = 1e-3  # p-value above which the right law is accepted (fixed seeds: deterministic)


def _chi_square_pvalue(samples: np.ndarray, pmf, lo: int, hi: int) -> float:
    """Chi-square goodness of fit on the integers lo..hi plus one bin for the tails,
    small bins (expected < 5) merged into the tail bin."""
    n = samples.size
    values = np.arange(lo, hi + 1)
    probs = pmf(values)
    expected = n * probs
    observed = np.array([(samples == v).sum() for v in values], dtype=float)
    observed = np.append(observed, ((samples < lo) | (samples > hi)).sum())
    expected = np.append(expected, n * max(0.0, 1.0 - probs.sum()))
    keep = expected >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 5:
        obs[-2] += obs[-1]
        exp[-2] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


def _skellam_pvalue(sums: np.ndarray, variance: float) -> float:
    mu = variance / 2.0
    sd = np.sqrt(variance)
    lo, hi = int(-4 * sd) - 1, int(4 * sd) + 1
    return _chi_square_pvalue(sums, lambda z: stats.skellam.pmf(z, mu, mu), lo, hi)


def _check_sums(shares: np.ndarray, sigma: float, secret: int) -> None:
    """Sum of all N rows ~ Skellam(σ²), of the first `secret` rows ~ Skellam(σ² secret/N)."""
    n = shares.shape[0]
    full = shares.sum(axis=0)
    part = shares[:secret].sum(axis=0)
    tau = secret / n
    assert _skellam_pvalue(full, sigma**2) > ACCEPT
    assert _skellam_pvalue(part, tau * sigma**2) > ACCEPT
    # the same test rejects a 15% wrong σ
    assert _skellam_pvalue(full, (1.15 * sigma) ** 2) < ACCEPT
    assert _skellam_pvalue(part, tau * (1.15 * sigma) ** 2) < ACCEPT


# ------------------------------------------------------------------ seeded mode
@pytest.mark.parametrize("sigma", [6.0, 25.0])
def test_seeded_sums_are_skellam(sigma):
    rng = np.random.default_rng(2021)
    shares = sample_skellam_shares(N, 6000, sigma, rng)  # 6000 independent class counts
    assert shares.shape == (N, 6000) and shares.dtype == np.int64
    _check_sums(shares, sigma, secret=int(0.7 * N))


def test_per_holder_generators_sums_are_skellam():
    sigma = 8.0
    shares = sample_skellam_shares(N, 5000, sigma, holder_generators(7, N))
    _check_sums(shares, sigma, secret=int(0.9 * N))


def test_seeded_mode_is_reproducible_and_per_holder_streams_are_independent():
    a = sample_skellam_shares(20, 8, 5.0, holder_generators(3, 20))
    b = sample_skellam_shares(20, 8, 5.0, holder_generators(3, 20))
    np.testing.assert_array_equal(a, b)
    # a holder drawing only its own row with its own stream gets the same row
    gens = holder_generators(3, 20)
    own = sample_skellam_shares(20, 8, 5.0, [gens[4]], rows=1)
    np.testing.assert_array_equal(own[0], a[4])


# -------------------------------------------------------------- production mode
@pytest.mark.parametrize("sigma,holders", [(6.0, 50), (30.0, 50)])
def test_production_sums_are_skellam(sigma, holders):
    shares = sample_skellam_shares(holders, 12_000, sigma)  # OS randomness
    assert shares.dtype == np.int64
    # OS randomness is not seeded: accept at a lower level so that the test is not flaky
    # (Pr[false failure] = 1e-6 per check), while a 25% wrong σ is still far below it
    full, part = shares.sum(axis=0), shares[: int(0.7 * holders)].sum(axis=0)
    tau = int(0.7 * holders) / holders
    assert _skellam_pvalue(full, sigma**2) > 1e-6
    assert _skellam_pvalue(part, tau * sigma**2) > 1e-6
    assert _skellam_pvalue(full, (1.25 * sigma) ** 2) < 1e-6
    assert _skellam_pvalue(part, tau * (1.25 * sigma) ** 2) < 1e-6


@pytest.mark.parametrize("mu", [0.03, 2.5, 40.0])
def test_os_poisson_matches_poisson(mu):
    x = os_poisson(mu, 60_000)
    assert x.dtype == np.int64 and x.min() >= 0
    hi = int(mu + 6 * np.sqrt(mu) + 3)
    assert _chi_square_pvalue(x, lambda k: stats.poisson.pmf(k, mu), 0, hi) > 1e-6
    assert _chi_square_pvalue(x, lambda k: stats.poisson.pmf(k, 1.25 * mu), 0, hi) < 1e-6


def test_poisson_tables_keep_relative_precision_in_both_tails():
    cdf, sf = _poisson_tables(8.0)
    assert sf[-1] == 0.0 and cdf[-1] == 1.0
    # Pr[X > 60] for Poisson(8) (mpmath, 50 digits): far below the 2^-53 granularity of ppf(U)
    assert sf[60] == pytest.approx(9.2998683849713120670e-33, rel=1e-12)
    assert cdf[0] == pytest.approx(np.exp(-8.0), rel=1e-14)
    assert np.all(np.diff(cdf) >= 0) and np.all(np.diff(sf) <= 0)
    # large mean: the lower tail too
    cdf, _sf = _poisson_tables(800.0)
    assert cdf[300] == pytest.approx(1.6188625075481193528e-91, rel=1e-10)
    assert cdf[300] == pytest.approx(special.pdtr(300, 800.0), rel=1e-15)


def test_production_shapes_and_rows():
    one = sample_skellam_shares(250, 10, 40.0, rows=1)
    assert one.shape == (1, 10) and one.dtype == np.int64


# --------------------------------------------------------------------- validation
@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan"), float("inf"), "x", True])
def test_bad_sigma_is_an_input_error(sigma):
    with pytest.raises(InputError, match="σ"):
        sample_skellam_shares(10, 3, sigma, np.random.default_rng(0))


def test_bad_shapes_and_generator_count():
    with pytest.raises(ValueError, match="num_holders"):
        sample_skellam_shares(0, 3, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_classes"):
        sample_skellam_shares(3, 0, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rows"):
        sample_skellam_shares(3, 2, 1.0, np.random.default_rng(0), rows=0)
    with pytest.raises(ValueError, match="generators"):
        sample_skellam_shares(3, 2, 1.0, holder_generators(0, 2))
    with pytest.raises(ValueError, match="Poisson mean"):
        os_poisson(0.0, 3)
