"""Accountant of the lattice mechanism (docs/spec.md §3b): exact PMF, rigorous ε, q, tails, convergence."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import special

from speed.privacy import accountant as acc
from speed.privacy import epsilon, lattice
from speed.privacy.lattice import (
    continuous_argmax_epsilon,
    continuous_q,
    lattice_log_pmf,
    lattice_per_query_epsilon,
    lattice_q_bound,
    lattice_tail_probability,
    noise_bound_for,
)


def _direct_pmf(s, theta, zs, terms=6000):
    """Σ_k a_k a_{k+z} by brute force, NB(s, 1 − θ) PMF a_k."""
    k = np.arange(terms + max(zs) + 1, dtype=float)
    log_a = (s * math.log1p(-theta) + special.gammaln(k + s) - special.gammaln(s)
             - special.gammaln(k + 1) + k * math.log(theta))
    a = np.exp(log_a)
    return np.array([np.sum(a[:terms] * a[z:z + terms]) for z in zs])


@pytest.mark.parametrize("s, resolution", [(0.7, 50), (0.3, 20), (1.4, 40), (2.0, 7), (0.05, 30)])
def test_pmf_table_matches_brute_force(s, resolution):
    gamma = 3.3
    table = lattice._diff_nb(s, gamma, resolution)
    zs = [0, 1, 5, resolution, 3 * resolution, 10 * resolution]
    got = np.exp(table.log_pmf(np.array(zs)))
    want = _direct_pmf(s, math.exp(-gamma / resolution), zs)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    total = math.exp(table.log_pmf(np.array([0]))[0]) + 2 * math.exp(table.log_sf(np.array([1]))[0])
    assert total == pytest.approx(1.0, abs=1e-13)


def test_tau_one_pmf_is_discrete_laplace():
    lam, P = 0.31, 100
    z = np.arange(-500, 501)
    theta = math.exp(-1 / (lam * P))
    want = (1 - theta) / (1 + theta) * theta ** np.abs(z)
    np.testing.assert_allclose(np.exp(lattice_log_pmf(z, lam, P)), want, rtol=1e-12)
    # the general table (s = 1) agrees with the closed form
    table = lattice._diff_nb(1.0, 1 / lam, P)
    np.testing.assert_allclose(np.exp(table.log_pmf(z)), want, rtol=1e-10)


@pytest.mark.parametrize("resolution", [1, 10, 1000])
def test_tau_one_lattice_epsilon_is_two_gamma(resolution):
    assert lattice_per_query_epsilon(3.3, 1.0, resolution) == pytest.approx(6.6, rel=1e-15)
    assert lattice_per_query_epsilon(3.3, 1.0, resolution, "histogram") == pytest.approx(6.6, rel=1e-15)


@pytest.mark.parametrize("tau", [0.9, 0.7, 0.5, 0.3])
def test_argmax_bound_never_exceeds_histogram_bound(tau):
    for P in [1, 10, 100]:
        a = lattice_per_query_epsilon(3.3, tau, P)
        h = lattice_per_query_epsilon(3.3, tau, P, bound="histogram")
        assert 6.6 <= a <= h + 1e-12


def test_histogram_bound_matches_brute_force_max():
    # small lattice: compute max_z |log π(z) − log π(z+P)| directly over a wide window
    tau, gamma, P = 0.6, 1.0, 3
    z = np.arange(-600, 601)
    lp = np.log(_direct_pmf(tau, math.exp(-gamma / P), list(range(0, 605)), terms=1500))
    logpmf = lp[np.abs(z)]
    logpmf_shift = lp[np.abs(z + P)]
    brute = 2 * np.max(np.abs(logpmf - logpmf_shift))
    assert lattice_per_query_epsilon(gamma, tau, P, "histogram") == pytest.approx(brute, rel=1e-9)


def _argmax_probs(counts, P, pmf, support):
    """Exact Pr[output = j] of the noisy argmax (ties → lowest index), K = 3."""
    k = len(counts)
    noisy = [P * c + support for c in counts]
    probs = np.zeros(k)
    grids = np.meshgrid(*noisy, indexing="ij")
    weights = np.ones_like(grids[0], dtype=float)
    for axis in range(k):
        shape = [1] * k
        shape[axis] = -1
        weights = weights * pmf.reshape(shape)
    stacked = np.stack(grids)
    winner = np.argmax(stacked, axis=0)  # numpy: first maximum = lowest index
    for j in range(k):
        probs[j] = weights[winner == j].sum()
    return probs


@pytest.mark.parametrize("tau", [1.0, 0.6, 0.3])
def test_argmax_bound_holds_by_exhaustive_check(tau):
    """Privacy of the K = 3 noisy argmax with a priority tie rule, all neighbours of small counts."""
    gamma, P = 1.0, 2
    support = np.arange(-40, 41)
    pmf = np.exp(lattice._diff_nb(tau, gamma, P).log_pmf(support)) if tau < 1 else \
        np.exp(lattice_log_pmf(support, 1 / gamma, P))
    eps = lattice_per_query_epsilon(gamma, tau, P)
    probs = {c: np.log(_argmax_probs(c, P, pmf, support))
             for c in itertools.product(range(3), repeat=3)}
    worst = 0.0
    for counts, base in probs.items():
        for a, b in itertools.permutations(range(3), 2):
            moved = list(counts)
            moved[a] -= 1
            moved[b] += 1
            if tuple(moved) in probs:
                worst = max(worst, float(np.max(np.abs(base - probs[tuple(moved)]))))
    assert worst <= eps + 1e-6
    assert worst >= 0.5 * eps  # the bound is not vacuous


@pytest.mark.parametrize("tau", [0.9, 0.7, 0.3])
def test_lattice_epsilon_converges_to_continuous_limit(tau):
    limit = continuous_argmax_epsilon(3.3, tau)
    errors = [abs(lattice_per_query_epsilon(3.3, tau, P) - limit) for P in (10, 100, 10_000)]
    assert errors[-1] < 1e-4 * limit
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("tau", [1.0, 0.7, 0.3])
def test_lattice_q_converges_to_continuous_q(tau):
    counts = [30, 28, 25, 20]
    exact = continuous_q(counts, 0.5, tau)
    errs = [abs(lattice_q_bound(counts, 0.5, tau, P) - exact) for P in (10, 100, 10_000)]
    assert errs[-1] < 1e-3 * exact and errs[-1] < errs[0]
    # the continuous limit of the exact union bound lies below the paper's closed-form bound
    assert exact <= acc.q_bound(counts, 0.5, tau) * (1 + 1e-12)


def test_tau_one_lattice_totals_converge_to_paper_formulas():
    rng = np.random.default_rng(5)
    counts = rng.multinomial(50, [0.5, 0.3, 0.2], size=40)
    paper = epsilon(counts, 0.5, 1.0, 1e-5)
    lat = epsilon(counts, 0.5, 1.0, 1e-5, mechanism="lattice", resolution=10_000)
    assert lat["data_independent"] == pytest.approx(paper["data_independent"], rel=1e-12)
    assert lat["data_dependent"] == pytest.approx(paper["data_dependent"], rel=1e-3)
    assert lat["mechanism"] == "lattice" and lat["resolution"] == 10_000


def test_lattice_epsilon_dict_and_speed():
    import time

    rng = np.random.default_rng(1)
    counts = rng.multinomial(250, [0.4, 0.3, 0.1, 0.1, 0.1], size=10_000)
    start = time.perf_counter()
    out = epsilon(counts, 3.3, 0.7, 1e-5, mechanism="lattice", resolution=1000)
    assert time.perf_counter() - start < 10.0
    assert out["data_dependent"] <= out["data_independent"]
    assert out["per_query_epsilon"] == lattice_per_query_epsilon(3.3, 0.7, 1000)


def test_lattice_needs_integer_counts():
    with pytest.raises(ValueError, match="integer"):
        epsilon([[3.5, 1, 0]], 3.3, 0.9, 1e-5, mechanism="lattice", resolution=10)
    with pytest.raises(ValueError, match="resolution"):
        lattice_per_query_epsilon(3.3, 0.9, 0)
    with pytest.raises(ValueError, match="bound"):
        lattice_per_query_epsilon(3.3, 0.9, 10, bound="tight")


# ------------------------------------------------------------- tails and noise bound
def test_tail_probability_closed_form_and_pmf():
    lam, P = 0.31, 1000
    theta = math.exp(-1 / (lam * P))
    for A in [0, 10, 1000, 20_000]:
        assert lattice_tail_probability(A, lam, P) == pytest.approx(2 * theta ** (A + 1) / (1 + theta),
                                                                    rel=1e-9)
    # τ < 1 from the PMF: complement of the central mass
    A, tau, P2 = 40, 0.6, 10
    z = np.arange(-A, A + 1)
    inside = np.exp(lattice_log_pmf(z, 1.0, P2, tau)).sum()
    assert lattice_tail_probability(A, 1.0, P2, tau) == pytest.approx(1 - inside, rel=1e-9)


@pytest.mark.parametrize("beta", [1e-3, 1e-12, 1e-40])
def test_noise_bound_is_the_smallest(beta):
    lam, P = 0.31, 1000
    A = noise_bound_for(beta, lam, P)
    assert lattice_tail_probability(A, lam, P) <= beta < lattice_tail_probability(A - 1, lam, P)
    A10 = noise_bound_for(beta, lam, P, coordinates=10)
    assert 10 * lattice_tail_probability(A10, lam, P) <= beta
    assert A10 > A


def test_tail_and_bound_guards():
    with pytest.raises(ValueError):
        noise_bound_for(0.0, 0.31, 1000)
    with pytest.raises(ValueError):
        noise_bound_for(1e-9, -1, 1000)
    with pytest.raises(ValueError):
        lattice_tail_probability(-1, 0.31, 1000)
    with pytest.raises(ValueError):
        lattice_tail_probability(10, 0.31, 1000, tau=0)
