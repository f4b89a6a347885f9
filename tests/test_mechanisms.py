"""Typed noise mechanisms (speed.privacy.mechanisms): validation, registry, delegation, laws, bounds."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from speed.errors import InputError
from speed.privacy import lattice_log_pmf, noise_bound_for
from speed.privacy.mechanisms import (
    GammaLaplace,
    LatticeLaplace,
    Mechanism,
    Skellam,
    mechanism_from_dict,
    mechanism_from_name,
)
from speed.privacy.noise import (
    holder_generators,
    sample_lattice_shares,
    sample_shares,
    sample_skellam_shares,
)

ALL = [Skellam(40.0), LatticeLaplace(0.5, 4), GammaLaplace(3.3)]


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "abc", None, True])
@pytest.mark.parametrize("cls", [Skellam, GammaLaplace, LatticeLaplace])
def test_bad_noise_parameter_is_a_one_line_input_error(cls, bad):
    with pytest.raises(InputError) as info:
        cls(bad)
    assert "\n" not in str(info.value) and "positive finite" in str(info.value)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "x", True])
def test_bad_resolution(bad):
    with pytest.raises(InputError, match="resolution"):
        LatticeLaplace(1.0, bad)


def test_objects_are_frozen_hashable_and_normalised():
    m = Skellam(40)
    assert m.sigma == 40.0 and isinstance(m.sigma, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.sigma = 3.0  # type: ignore[misc]
    assert hash(m) == hash(Skellam(40.0)) and m == Skellam(40.0)
    assert m != GammaLaplace(40.0)
    assert LatticeLaplace(1.0, 4.0).resolution == 4
    assert {m.name for m in ALL} == {"skellam", "lattice", "gamma"}


# ------------------------------------------------------------------------ registry
def test_registry_names_and_aliases():
    assert mechanism_from_name("skellam", sigma=40) == Skellam(40.0)
    assert mechanism_from_name("lattice", gamma=3.3, resolution=10) == LatticeLaplace(3.3, 10)
    assert mechanism_from_name("lattice", gamma=3.3) == LatticeLaplace(3.3, 1)
    assert mechanism_from_name("gamma", gamma=3.3) == GammaLaplace(3.3)
    assert mechanism_from_name("Laplace", gamma=3.3) == GammaLaplace(3.3)
    with pytest.raises(InputError, match="unknown noise mechanism"):
        mechanism_from_name("gaussian", sigma=1.0)
    with pytest.raises(InputError, match="unexpected"):
        mechanism_from_name("skellam", gamma=1.0)
    with pytest.raises(InputError, match="mechanism 'skellam'"):
        mechanism_from_name("skellam")


@pytest.mark.parametrize("mech", ALL)
def test_dict_round_trip(mech):
    d = mech.to_dict()
    assert d["mechanism"] == mech.name
    assert mechanism_from_dict(d) == mech
    assert type(mech).from_dict(d) == mech
    assert Mechanism.from_dict(d) == mech


def test_from_dict_errors():
    with pytest.raises(InputError, match="'mechanism' key"):
        mechanism_from_dict({"sigma": 1.0})
    with pytest.raises(InputError, match="not a Skellam"):
        Skellam.from_dict(GammaLaplace(1.0).to_dict())


# ----------------------------------------------------------------------- sampling
def test_sampling_delegates_to_noise_module():
    np.testing.assert_array_equal(
        Skellam(9.0).sample_shares(30, 5, np.random.default_rng(1)),
        sample_skellam_shares(30, 5, 9.0, np.random.default_rng(1)))
    np.testing.assert_array_equal(
        LatticeLaplace(0.5, 4).sample_shares(30, 5, np.random.default_rng(1)),
        sample_lattice_shares(30, 5, 2.0, 4, np.random.default_rng(1)))
    np.testing.assert_array_equal(
        GammaLaplace(0.5).sample_shares(30, 5, np.random.default_rng(1)),
        sample_shares(30, 5, 2.0, np.random.default_rng(1)))


@pytest.mark.parametrize("mech", ALL)
def test_sampling_shapes_rows_and_generator_lists(mech):
    assert mech.sample_shares(12, 3).shape == (12, 3)  # production mode
    assert mech.sample_shares(12, 3, rows=1).shape == (1, 3)
    assert mech.sample_shares(12, 3, size=2).shape == (2, 3)
    a = mech.sample_shares(12, 3, holder_generators(5, 12))
    b = mech.sample_shares(12, 3, holder_generators(5, 12))
    assert a.shape == (12, 3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises((InputError, ValueError), match="generators"):
        mech.sample_shares(12, 3, holder_generators(5, 11))
    with pytest.raises(InputError, match="not both"):
        mech.sample_shares(12, 3, rows=1, size=2)


# -------------------------------------------------------------------- laws of sums
@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_skellam_sum_law(tau):
    m = Skellam(12.0)
    z = np.arange(-60, 61)
    mu = tau * 144.0 / 2
    np.testing.assert_allclose(m.sum_log_pmf(z, tau), stats.skellam.logpmf(z, mu, mu), rtol=1e-9)
    z, logp, tail = m.support(tau)
    assert math.fsum(np.exp(logp)) + tail == pytest.approx(1.0, abs=1e-14)
    assert tail < math.exp(-45)
    with pytest.raises(InputError, match="integer"):
        m.sum_log_pmf(0.5)


def test_lattice_and_gamma_sum_laws():
    m = LatticeLaplace(0.5, 4)
    z = np.arange(-50, 51)
    np.testing.assert_array_equal(m.sum_log_pmf(z, 0.7), lattice_log_pmf(z, 2.0, 4, 0.7))
    assert m.vote_step == 4
    g = GammaLaplace(0.5)
    x = np.linspace(-10, 10, 41)
    np.testing.assert_allclose(g.sum_log_pmf(x), stats.laplace.logpdf(x, scale=2.0), rtol=1e-12)
    with pytest.raises(InputError, match="no lattice support"):
        g.support()


# ------------------------------------------------------------------------- bounds
def test_skellam_noise_bound_known_answer():
    m = Skellam(40.0)
    a = m.noise_bound(1e-12, 1)
    assert a == 286 and a / 40.0 == pytest.approx(7.15, abs=0.01)
    # minimal: the tail at A is within the budget, at A - 1 it is not
    assert m.sum_tail(a) <= 1e-12 < m.sum_tail(a - 1)
    # exact tails agree with scipy's Skellam survival function (to its own accuracy)
    assert m.sum_tail(a) == pytest.approx(2 * stats.skellam.sf(a, 800, 800), rel=1e-2)
    assert m.sum_tail(100) == pytest.approx(2 * stats.skellam.sf(100, 800, 800), rel=1e-6)
    # a union bound over more coordinates needs a larger range
    assert m.noise_bound(1e-12, 10 * 500) > a


def test_laplace_noise_bounds():
    assert LatticeLaplace(0.5, 4).noise_bound(1e-9, 50) == noise_bound_for(1e-9, 2.0, 4, coordinates=50)
    g = GammaLaplace(0.5)
    a = g.noise_bound(1e-9, 50)
    assert 50 * math.exp(-a * 0.5) <= 1e-9 < 50 * math.exp(-(a - 1) * 0.5)
    with pytest.raises(InputError, match="failure_probability"):
        g.noise_bound(0.0, 1)
    with pytest.raises(InputError, match="coordinates"):
        Skellam(1.0).noise_bound(1e-6, 0)


