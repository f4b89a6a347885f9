"""Publishable ε by privacy loss distributions (speed.privacy.pld) and noise calibration.

Known answers (Agarwal, Kairouz & Liu 2021's Skellam mechanism, dp_accounting's PLD,
discretisation 1e-5, δ = 1e-5): σ = 40, 500 queries → ε ≈ 3.346 (Gaussian: 3.341);
ε = 2 needs σ ≈ 28 for 100 queries and σ ≈ 63 for 500.
"""

from __future__ import annotations

import math
import time

import dp_accounting
import pytest
from dp_accounting.pld import privacy_loss_distribution as pldm

from speed.errors import InputError
from speed.privacy import pld
from speed.privacy.calibrate import calibrate
from speed.privacy.mechanisms import GammaLaplace, LatticeLaplace, Skellam

DELTA = 1e-5


# ------------------------------------------------------------------- known answers
def test_skellam_known_answer_and_gaussian_reference():
    m = Skellam(40.0)
    eps = pld.publishable_epsilon(m, 500, DELTA)
    gauss = pld.gaussian_epsilon(40.0, 500, DELTA)
    assert eps == pytest.approx(3.346, abs=0.01)
    assert gauss == pytest.approx(3.341, abs=0.01)
    # the same Gaussian as one sensitivity-√2 event per query
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-5)
    acc.compose(dp_accounting.GaussianDpEvent(40.0 / math.sqrt(2.0)), 500)
    assert acc.get_epsilon(DELTA) == pytest.approx(gauss, abs=1e-6)
    # pessimistic ≥ optimistic, and the gap is the rounding (≤ one step per composed PLD)
    opt = pld.publishable_epsilon(m, 500, DELTA, pessimistic=False)
    assert opt <= eps <= opt + 2 * 500 * 1e-5 + 1e-6


def test_both_orders_give_the_same_pld():
    m = Skellam(40.0)
    sym = pld.publishable_epsilon(m, 100, DELTA)
    both = pld.publishable_epsilon(m, 100, DELTA, symmetric=False)
    assert both == pytest.approx(sym, abs=1e-6)
    lat = LatticeLaplace(0.3, 3)
    assert pld.publishable_epsilon(lat, 50, DELTA, 0.7, symmetric=False) == pytest.approx(
        pld.publishable_epsilon(lat, 50, DELTA, 0.7), abs=1e-6)


def test_vectorised_rounding_equals_dp_accounting_from_two_pmfs():
    """Same PLD as dp_accounting's own constructor fed with dicts (truncated mass as an
    outcome that only the upper law has, i.e. infinite loss)."""
    m = Skellam(3.0)
    z, log_upper, tail = m.support(1.0)
    log_lower = m.sum_log_pmf(z - 1)
    upper = {int(k): float(v) for k, v in zip(z, log_upper)}
    upper["truncated"] = math.log(tail)
    lower = {int(k): float(v) for k, v in zip(z, log_lower)}
    ref = pldm.from_two_probability_mass_functions(lower, upper, value_discretization_interval=1e-4)
    ours = pld.coordinate_pld(m, value_discretization_interval=1e-4)
    for count in (1, 40):
        assert ours.self_compose(count).get_epsilon_for_delta(DELTA) == pytest.approx(
            ref.self_compose(count).get_epsilon_for_delta(DELTA), abs=1e-9)


def test_rdp_cross_check():
    m = Skellam(40.0)
    eps = pld.publishable_epsilon(m, 500, DELTA)
    rdp = pld.rdp_epsilon(m, 500, DELTA)
    # RDP-to-(ε, δ) is looser than the PLD, but not by much for Gaussian-like noise
    assert eps <= rdp <= 1.15 * eps
    lat = LatticeLaplace(0.05)
    assert pld.publishable_epsilon(lat, 100, DELTA) <= pld.rdp_epsilon(lat, 100, DELTA)


def test_laplace_mechanisms_match_dp_accounting():
    g = GammaLaplace(0.05)
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-5)
    acc.compose(dp_accounting.LaplaceDpEvent(1.0 / 0.05), 2 * 100)
    assert pld.publishable_epsilon(g, 100, DELTA) == pytest.approx(acc.get_epsilon(DELTA), abs=1e-6)
    # lattice at τ = 1 is the discrete Laplace mechanism: dp_accounting's own PLD
    lat = LatticeLaplace(0.05, 1)
    ref = pldm.from_discrete_laplace_mechanism(0.05, sensitivity=1, value_discretization_interval=1e-5)
    assert pld.publishable_epsilon(lat, 100, DELTA) == pytest.approx(
        ref.self_compose(200).get_epsilon_for_delta(DELTA), abs=1e-6)
    # the continuous law at τ < 1 is refused with a clear message
    with pytest.raises(InputError, match="not supported"):
        pld.publishable_epsilon(g, 10, DELTA, 0.9)


def test_skellam_collusion_costs_exactly_sqrt_tau_in_sigma():
    assert pld.publishable_epsilon(Skellam(40.0), 100, DELTA, 0.64) == pytest.approx(
        pld.publishable_epsilon(Skellam(32.0), 100, DELTA), abs=1e-9)


def test_heterogeneous_queries():
    m = Skellam(40.0)
    all_one = pld.epsilon_for_queries(m, [1.0] * 200, DELTA)
    assert all_one == pld.publishable_epsilon(m, 200, DELTA)
    mixed = pld.epsilon_for_queries(m, [1.0] * 100 + [0.7] * 100, DELTA)
    assert all_one < mixed < pld.publishable_epsilon(m, 200, DELTA, 0.7)
    # order does not matter
    assert pld.epsilon_for_queries(m, [0.7, 1.0] * 100, DELTA) == pytest.approx(mixed, abs=1e-9)
    assert pld.epsilon_for_queries(m, [], DELTA) == 0.0
    assert pld.publishable_epsilon(m, 0, DELTA) == 0.0
    assert pld.publishable_epsilon(m, 100, DELTA) < pld.publishable_epsilon(m, 200, DELTA)


def test_epsilon_is_fast():
    m = Skellam(41.234)  # not cached by any other test
    start = time.perf_counter()
    pld.publishable_epsilon(m, 500, DELTA)
    first = time.perf_counter() - start
    start = time.perf_counter()
    pld.epsilon_for_queries(m, [1.0] * 499 + [0.9], DELTA)
    second = time.perf_counter() - start
    # ≈ 0.5 s on an idle core; generous for a shared machine
    assert first < 10.0 and second < 10.0


def test_input_errors():
    m = Skellam(4.0)
    with pytest.raises(InputError, match="delta"):
        pld.publishable_epsilon(m, 10, 0.0)
    with pytest.raises(InputError, match="num_queries"):
        pld.publishable_epsilon(m, -1, DELTA)
    with pytest.raises(InputError, match="tau"):
        pld.publishable_epsilon(m, 10, DELTA, 1.5)
    with pytest.raises(InputError, match="value_discretization_interval"):
        pld.publishable_epsilon(m, 10, DELTA, value_discretization_interval=0)
    with pytest.raises(InputError, match="mechanism object"):
        pld.publishable_epsilon("skellam", 10, DELTA)  # type: ignore[arg-type]


# --------------------------------------------------------------------- calibration
@pytest.mark.parametrize("queries,expected", [(100, 28.0), (500, 63.0)])
def test_calibration_known_answers(queries, expected):
    m, eps = calibrate("skellam", 2.0, queries, DELTA)
    assert isinstance(m, Skellam)
    assert m.sigma == pytest.approx(expected, abs=1.5)
    assert eps <= 2.0 and eps == pld.publishable_epsilon(m, queries, DELTA)
    # and (almost) the least such σ: 0.3% less noise misses the target
    assert pld.publishable_epsilon(Skellam(m.sigma * 0.997), queries, DELTA) > 2.0


def test_calibration_is_monotone():
    h = {"value_discretization_interval": 1e-4}  # coarser grid: fast, still pessimistic
    base, e0 = calibrate("skellam", 2.0, 50, DELTA, **h)
    looser, e1 = calibrate("skellam", 4.0, 50, DELTA, **h)
    more, e2 = calibrate("skellam", 2.0, 100, DELTA, **h)
    collude, e3 = calibrate("skellam", 2.0, 50, DELTA, 0.7, **h)
    assert looser.sigma < base.sigma < more.sigma
    assert collude.sigma > base.sigma
    assert collude.sigma == pytest.approx(base.sigma / math.sqrt(0.7), rel=3e-3)
    assert max(e0, e2, e3) <= 2.0 and e1 <= 4.0


def test_calibration_of_laplace_mechanisms():
    h = {"value_discretization_interval": 1e-4}
    lat, e_lat = calibrate("lattice", 2.0, 50, DELTA, resolution=1, **h)
    lat4, e_lat4 = calibrate("lattice", 4.0, 50, DELTA, resolution=1, **h)
    assert isinstance(lat, LatticeLaplace) and lat.resolution == 1
    assert e_lat <= 2.0 and e_lat4 <= 4.0
    assert lat4.gamma > lat.gamma  # a looser target allows less noise (larger γ)
    gam, e_gam = calibrate("gamma", 2.0, 50, DELTA, **h)
    assert isinstance(gam, GammaLaplace) and e_gam <= 2.0


def test_calibration_errors():
    with pytest.raises(InputError, match="out of reach"):
        calibrate("skellam", 1e-5, 100, DELTA, value_discretization_interval=1e-3)
    with pytest.raises(InputError, match="nothing to calibrate"):
        calibrate("skellam", 1e4, 1, 0.5, value_discretization_interval=1e-3)
    with pytest.raises(InputError, match="beyond the exact PMF"):
        Skellam(1e5).sum_log_pmf(0)
    with pytest.raises(InputError, match="target_epsilon"):
        calibrate("skellam", -1.0, 100, DELTA)
    with pytest.raises(InputError, match="unknown noise mechanism"):
        calibrate("gaussian", 1.0, 100, DELTA)
    with pytest.raises(InputError, match="num_queries"):
        calibrate("skellam", 1.0, 0, DELTA)
