"""SPEED's continuous accountant (docs/spec.md §4): known answers, cross-checks, accuracy, guards."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from speed.privacy import accountant as acc
from speed.privacy import epsilon, per_query_epsilon, q_bound
from speed.privacy import variance_gamma as vg


# ----------------------------------------------------------------- known answers
@pytest.mark.parametrize("tau, expected", [(1.0, 6.6), (0.9, 7.2253), (0.7, 7.9427)])
def test_spec_known_values(tau, expected):
    assert round(per_query_epsilon(3.3, tau), 4) == expected


@pytest.mark.parametrize("gamma", [0.01, 0.05, 0.5, 3.3, 12.0])
def test_tau_one_is_two_gamma(gamma):
    assert per_query_epsilon(gamma, 1.0) == pytest.approx(2 * gamma, rel=1e-15)
    # the general ε₂ formula reduces to 2γ too (not just the short-cut)
    parts = acc.per_query_epsilon_parts(gamma, 1.0)
    assert parts["eps2"] == pytest.approx(2 * gamma, rel=1e-9)


def test_parts_choose_min_and_eps2_only_above_half():
    p = acc.per_query_epsilon_parts(3.3, 0.9)
    assert p["epsilon"] == min(p["eps1"], p["eps2"]) == pytest.approx(7.2253, abs=5e-5)
    assert math.isinf(acc.per_query_epsilon_parts(3.3, 0.5)["eps2"])
    assert per_query_epsilon(3.3, 0.3) == acc.per_query_epsilon_parts(3.3, 0.3)["eps1"]


def test_per_query_epsilon_large_gamma_no_overflow():
    # log-space: 2γ = 800 would underflow e^{−2γ} in a naive implementation
    e = per_query_epsilon(400.0, 0.7)
    assert math.isfinite(e) and e > 800


def _pate_q(counts, gamma):
    counts = np.asarray(counts, dtype=float)
    top = int(np.argmax(counts))
    s = sum((2 + gamma * (counts[top] - c)) / (4 * math.exp(gamma * (counts[top] - c)))
            for j, c in enumerate(counts) if j != top)
    return min(s, 1 - 1 / counts.size)


@pytest.mark.parametrize("counts", [[200, 30, 20], [120, 118, 10, 2], [10, 0, 0, 0, 0], [5, 5, 0]])
@pytest.mark.parametrize("gamma", [0.05, 0.3, 3.3])
def test_tau_one_q_is_pate(counts, gamma):
    assert q_bound(counts, gamma, 1.0) == pytest.approx(_pate_q(counts, gamma), rel=1e-12)


@pytest.mark.parametrize("tau", [0.9, 0.7, 0.55, 0.5, 0.3, 0.1])
def test_paper_q_bounds_exact_pairwise_probability(tau):
    # q's pair term bounds Pr[W_{2τ} > Δ] (difference of two Z_τ = Gamma(2τ) − Gamma(2τ))
    for delta in [0.01, 0.3, 1.0, 3.3, 10.0, 40.0]:
        bound = float(np.exp(acc._paper_log_pair_bound(np.array([delta]), tau))[0])
        exact = math.exp(acc.vg_log_sf(delta, 2 * tau))
        assert bound >= exact * (1 - 1e-12)


# ------------------------------------------------------------ numerical accuracy
def test_variance_gamma_functions_against_mpmath():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 25

    def pdf(x, s):
        nu = s - mp.mpf(1) / 2
        return abs(x) ** nu * mp.besselk(nu, abs(x)) / (mp.sqrt(mp.pi) * mp.gamma(s) * 2**nu)

    for s, x in [(0.7, 6.6), (0.3, 3.3), (1.4, 0.7)]:
        s_, x_ = mp.mpf(s), mp.mpf(x)
        tail = mp.quad(lambda t: pdf(t, s_), [x_, x_ + 1, x_ + 5, x_ + 20, mp.inf])
        assert vg.log_tail(x, s) == pytest.approx(float(mp.log(tail)), rel=1e-12, abs=1e-12)
        central = 2 * mp.quad(lambda t: pdf(t, s_), [0, x_ / 2, x_])
        assert vg.central_mass(x, s) == pytest.approx(float(central), rel=1e-12)
        assert vg.vg_pdf(x, s)[()] == pytest.approx(float(pdf(x_, s_)), rel=1e-12)


def test_epsilon_parts_against_mpmath():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 25
    g, s = mp.mpf("3.3"), mp.mpf("0.9")
    nu = s - mp.mpf(1) / 2

    def pdf(x):
        x = abs(x)
        if x == 0:
            return mp.gamma(s - mp.mpf(1) / 2) / (2 * mp.sqrt(mp.pi) * mp.gamma(s))
        return x**nu * mp.besselk(nu, x) / (mp.sqrt(mp.pi) * mp.gamma(s) * 2**nu)

    t2 = mp.quad(pdf, [2 * g, 2 * g + 5, 2 * g + 20, mp.inf])  # 1 − F(2)
    central = 2 * mp.quad(pdf, [0, g / 2, g])  # F(1) − F(−1)
    eps1 = mp.log(1 + central / t2)
    gprime = g * (mp.mpf(1) / 2 * pdf(2 * g) - t2 * pdf(0)) / t2**2
    eps2 = mp.log(mp.mpf(1) / 2 / t2 - gprime)
    parts = acc.per_query_epsilon_parts(3.3, 0.9)
    assert parts["eps1"] == pytest.approx(float(eps1), rel=1e-9)
    assert parts["eps2"] == pytest.approx(float(eps2), rel=1e-9)


def test_vg_pdf_and_cdf_are_consistent():
    from scipy import integrate

    for s in [0.3, 0.7, 1.0, 1.8]:
        near, _ = integrate.quad(lambda t: acc.vg_pdf(t, s)[()], 0.0, 1.0, limit=200)
        far, _ = integrate.quad(lambda t: acc.vg_pdf(t, s)[()], 1.0, np.inf, limit=200)
        assert 2 * (near + far) == pytest.approx(1.0, abs=1e-8)
        a, b = 0.4, 2.5
        mass, _ = integrate.quad(lambda t: acc.vg_pdf(t, s, 2.0)[()], a, b)
        cdf = acc.vg_cdf([a, b], s, 2.0)
        assert cdf[1] - cdf[0] == pytest.approx(mass, rel=1e-9)
    assert acc.vg_cdf(0.0, 0.4)[()] == 0.5
    # symmetric and monotone
    t = np.linspace(-5, 5, 41)
    c = acc.vg_cdf(t, 0.6)
    assert np.all(np.diff(c) > 0)
    np.testing.assert_allclose(c + c[::-1], 1.0, atol=1e-14)


def test_vg_cdf_against_monte_carlo():
    from scipy import stats

    rng = np.random.default_rng(7)
    s, lam = 0.7, 0.31
    x = rng.gamma(s, lam, 2000) - rng.gamma(s, lam, 2000)
    assert stats.kstest(x, lambda t: acc.vg_cdf(t, s, lam)).pvalue > 1e-3


def test_accounting_ten_thousand_queries_is_fast():
    rng = np.random.default_rng(0)
    counts = rng.multinomial(250, [0.5, 0.2, 0.1, 0.1, 0.05, 0.05], size=10_000)
    start = time.perf_counter()
    out = epsilon(counts, 2.7182, 0.8123, 1e-5)  # fresh (γ, τ): includes the integrals
    assert time.perf_counter() - start < 5.0
    assert out["num_queries"] == 10_000


# ---------------------------------------------------------------- moments accountant
def _pate_alpha(eps, q, l):
    vals = [eps * l, 0.5 * eps**2 * l * (l + 1)]
    if q < (math.exp(eps) - 1) / (math.exp(2 * eps) - 1):
        vals.append(math.log((1 - q) * ((1 - q) / (1 - math.exp(eps) * q)) ** l + q * math.exp(eps * l)))
    return min(vals)


@pytest.mark.parametrize("eps, q", [(0.1, 1e-3), (0.5, 0.05), (2.0, 1e-4), (6.6, 1e-6), (1.0, 0.4)])
def test_moments_alpha_matches_formula(eps, q):
    got = acc.moments_alpha([eps], [math.log(q)], 25)[0]
    want = [_pate_alpha(eps, q, l) for l in range(1, 26)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_epsilon_dict_and_relations():
    rng = np.random.default_rng(3)
    counts = rng.multinomial(250, [0.6, 0.25, 0.1, 0.05], size=100)
    out = epsilon(counts, 3.3, 0.9, 1e-5)
    for key in ("data_dependent", "data_independent", "order", "order_data_independent",
                "per_query_epsilon", "publishable"):
        assert key in out
    assert out["publishable"] == "data_independent"
    assert out["data_dependent"] <= out["data_independent"]
    assert out["data_independent"] <= out["basic_composition"] + 1e-9
    assert 1 <= out["order"] <= 25
    # hand-computed data-dependent value: q from the paper's bound per query
    alphas = np.zeros(25)
    for row in counts:
        q = q_bound(row, 3.3, 0.9)
        alphas += [_pate_alpha(out["per_query_epsilon"], q, l) for l in range(1, 26)]
    want = min((alphas[l - 1] + math.log(1e5)) / l for l in range(1, 26))
    assert out["data_dependent"] == pytest.approx(min(want, out["basic_composition"]), rel=1e-9)


def test_data_independent_formula_and_basic_composition():
    # SPEC: only the first two α terms, then min over l, capped by basic composition
    for gamma, q_count in [(0.05, 100), (0.2, 300), (3.3, 100)]:
        out = epsilon(np.zeros((q_count, 10)), gamma, 1.0, 1e-5)
        e = 2 * gamma
        want = min(min((q_count * min(e * l, 0.5 * e * e * l * (l + 1)) + math.log(1e5)) / l
                       for l in range(1, 26)), q_count * e)
        assert out["data_independent"] == pytest.approx(want, rel=1e-12)
        assert out["data_independent"] <= q_count * e


def test_failure_probability_folding():
    counts = np.random.default_rng(2).multinomial(250, [0.6, 0.3, 0.1], size=50)
    clean = epsilon(counts, 3.3, 0.7, 1e-5)
    out = epsilon(counts, 3.3, 0.7, 1e-5, failure_probability=1e-15)
    assert out["data_dependent"] == clean["data_dependent"]
    assert out["delta_total_data_dependent"] == pytest.approx(
        1e-5 + (1 + math.exp(out["data_dependent"])) * 50e-15)
    assert out["delta_total_data_independent"] == 1.0  # e^ε B is meaningless at ε ≈ 400
    with pytest.raises(ValueError, match="failure_probability"):
        epsilon(counts, 3.3, 0.7, 1e-5, failure_probability=1.5)


def test_zero_queries_cost_nothing():
    out = epsilon(np.zeros((0, 10)), 3.3, 0.9, 1e-5)
    assert out["data_independent"] == 0.0 and out["data_dependent"] == 0.0


def test_against_dp_accounting_laplace():
    """τ = 1: the noisy histogram is the Laplace mechanism (L1 sensitivity 2, scale λ).

    dp-accounting's PLD accountant is (near) tight, its RDP accountant uses the exact
    Laplace RDP: ours (PATE 2017's data-independent bound) must be no better than PLD, no
    worse than basic composition, and within 1.6x of PLD (docs/privacy.md lists the numbers).
    """
    dpa = pytest.importorskip("dp_accounting")
    from dp_accounting import pld

    for gamma, q_count in [(0.05, 100), (0.2, 100), (0.5, 100), (3.3, 100)]:
        event = dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(noise_multiplier=1 / (2 * gamma)), q_count)
        pld_acc = pld.PLDAccountant(dpa.NeighboringRelation.ADD_OR_REMOVE_ONE,
                                    value_discretization_interval=1e-3)
        pld_acc.compose(event)
        eps_pld = pld_acc.get_epsilon(1e-5)
        ours = epsilon(np.zeros((q_count, 10)), gamma, 1.0, 1e-5)["data_independent"]
        assert eps_pld <= ours <= 2 * gamma * q_count + 1e-9
        assert ours <= 1.6 * eps_pld


# ------------------------------------------------------------------------- guards
@pytest.mark.parametrize("gamma", [0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_gamma(gamma):
    with pytest.raises(ValueError, match="gamma"):
        per_query_epsilon(gamma, 0.9)


@pytest.mark.parametrize("tau", [0, -0.1, 1.0001, float("nan")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        per_query_epsilon(3.3, tau)
    with pytest.raises(ValueError, match="tau"):
        q_bound([3, 1], 3.3, tau)


@pytest.mark.parametrize("delta", [0, 1, -1e-5, 2.0])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match="delta"):
        epsilon(np.ones((2, 3)), 3.3, 0.9, delta)


def test_bad_counts_and_options():
    with pytest.raises(ValueError, match="non-negative"):
        q_bound([3, -1, 0], 3.3, 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        epsilon([[3, -1, 0]], 3.3, 1.0, 1e-5)
    with pytest.raises(ValueError, match="shape"):
        epsilon(np.ones((2, 3, 4)), 3.3, 1.0, 1e-5)
    with pytest.raises(ValueError, match="shape"):
        q_bound(np.ones((2, 3)), 3.3, 1.0)
    with pytest.raises(ValueError, match="K ≥ 2"):
        q_bound([5], 3.3, 1.0)
    with pytest.raises(ValueError, match="finite"):
        q_bound([5, float("nan")], 3.3, 1.0)
    with pytest.raises(ValueError, match="moments"):
        epsilon(np.ones((2, 3)), 3.3, 1.0, 1e-5, moments=0)
    with pytest.raises(ValueError, match="mechanism"):
        epsilon(np.ones((2, 3)), 3.3, 1.0, 1e-5, mechanism="gauss")
    with pytest.raises(ValueError, match="resolution"):
        epsilon(np.ones((2, 3)), 3.3, 1.0, 1e-5, resolution=100)
    with pytest.raises(ValueError, match="resolution"):
        epsilon(np.ones((2, 3)), 3.3, 1.0, 1e-5, mechanism="lattice")
