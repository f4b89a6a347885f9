"""Distributed noise shares (docs/spec.md §3, §3b): the laws of their sums, production mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from speed.privacy import lattice_log_pmf, vg_cdf
from speed.privacy.noise import (
    holder_generators,
    os_half_uniform,
    os_uniform,
    sample_lattice_shares,
    sample_shares,
)

N = 250


def test_sum_of_all_continuous_shares_is_laplace():
    rng = np.random.default_rng(2021)
    lam = 0.31
    sums = sample_shares(N, 3000, lam, rng).sum(axis=0)  # 3000 independent class counts
    assert stats.kstest(sums, "laplace", args=(0.0, lam)).pvalue > 1e-3
    # and a wrong scale is detected at this sample size
    assert stats.kstest(sums, "laplace", args=(0.0, 1.3 * lam)).pvalue < 1e-3


@pytest.mark.parametrize("tau", [0.9, 0.7, 0.3])
def test_sum_of_secret_shares_is_variance_gamma(tau):
    rng = np.random.default_rng(int(tau * 100))
    lam = 0.31
    secret = int(round(tau * N))
    sums = sample_shares(N, 1500, lam, rng)[:secret].sum(axis=0)
    assert stats.kstest(sums, lambda t: vg_cdf(t, tau, lam)).pvalue > 1e-3
    assert np.var(sums) == pytest.approx(2 * tau * lam**2, rel=0.15)


def _chi_square_pvalue(samples, log_pmf, lo, hi):
    """Chi-square goodness of fit on bins lo..hi plus the two tails, expected counts ≥ 5."""
    n = samples.size
    values = np.arange(lo, hi + 1)
    expected = n * np.exp(log_pmf(values))
    observed = np.array([(samples == v).sum() for v in values], dtype=float)
    tail_p = max(0.0, 1.0 - np.exp(log_pmf(values)).sum())
    observed = np.append(observed, ((samples < lo) | (samples > hi)).sum())
    expected = np.append(expected, n * tail_p)
    keep = expected >= 5
    # merge small bins into the tail bin
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 5:
        obs[-2] += obs[-1]
        exp[-2] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


def test_sum_of_all_lattice_shares_is_discrete_laplace():
    rng = np.random.default_rng(3)
    lam, P = 1.0, 4
    sums = sample_lattice_shares(N, 20_000, lam, P, rng).sum(axis=0)
    assert sums.dtype == np.int64
    pvalue = _chi_square_pvalue(sums, lambda z: lattice_log_pmf(z, lam, P), -25, 25)
    assert pvalue > 1e-3
    # the test has power: the continuous-scale mistake λ·1.2 is rejected
    wrong = _chi_square_pvalue(sums, lambda z: lattice_log_pmf(z, 1.2 * lam, P), -25, 25)
    assert wrong < 1e-3


def test_sum_of_secret_lattice_shares_follows_exact_pmf():
    rng = np.random.default_rng(4)
    lam, P, tau = 1.0, 4, 0.6
    secret = int(round(tau * N))
    sums = sample_lattice_shares(N, 20_000, lam, P, rng)[:secret].sum(axis=0)
    assert _chi_square_pvalue(sums, lambda z: lattice_log_pmf(z, lam, P, tau), -20, 20) > 1e-3


def test_lattice_rows_for_one_holder():
    rng = np.random.default_rng(0)
    one = sample_lattice_shares(N, 10, 0.31, 1000, rng, rows=1)
    assert one.shape == (1, 10) and one.dtype == np.int64


# --------------------------------------------------------------- production mode
def test_os_uniforms():
    u = os_uniform((200, 50))
    assert u.shape == (200, 50) and np.all((u > 0) & (u < 1))
    v = os_half_uniform(50_000)
    assert np.all((v > 0) & (v <= 0.5))
    assert stats.kstest(2 * v, "uniform").pvalue > 1e-4
    # binades get their exact mass: Pr[V < 2^-8] = 2^-7
    assert np.mean(v < 2.0**-8) == pytest.approx(2.0**-7, rel=0.3)
    # and points inside a far binade are still spread over 52 mantissa bits
    assert np.unique(v[v < 2.0**-8]).size == np.sum(v < 2.0**-8)


def test_production_mode_lattice_shares():
    draws = np.stack([sample_lattice_shares(N, 10, 1.0, 4, None).sum(axis=0) for _ in range(60)]).ravel()
    assert draws.dtype == np.int64
    theta = math.exp(-1 / 4)
    var = 2 * theta / (1 - theta) ** 2
    assert np.var(draws) == pytest.approx(var, rel=0.35)
    single = sample_lattice_shares(N, 10, 0.31, 1000, None, rows=1)
    assert single.shape == (1, 10) and np.all(np.abs(single) < 10**7)


def test_production_mode_continuous_shares():
    sums = np.stack([sample_shares(N, 25, 1.0, None).sum(axis=0) for _ in range(24)]).ravel()
    assert np.all(np.isfinite(sums))
    assert stats.kstest(sums, "laplace").pvalue > 1e-4


def test_holder_streams_are_independent_and_reproducible():
    a = [g.integers(0, 2**62, 4) for g in holder_generators(11, 3)]
    b = [g.integers(0, 2**62, 4) for g in holder_generators(11, 3)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])


def test_share_guards():
    with pytest.raises(ValueError):
        sample_shares(0, 10, 1.0)
    with pytest.raises(ValueError):
        sample_lattice_shares(10, 10, 1.0, 0)
    with pytest.raises(ValueError):
        sample_lattice_shares(10, 10, -1.0, 10)
