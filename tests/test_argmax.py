"""Exactness of the homomorphic argmax against numpy (lowest index wins ties).

Simulation (concrete's ``fhe_simulation``, same compiled integer semantics, no PBS noise)
covers > 1,000 queries including exact ties, near ties and the extremes of the compiled
range; real encrypted execution is covered by tests/test_key_model.py and test_demo.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from speed.bench.he import pbs_per_parameter
from speed.crypto.circuit import compile_module
from speed.crypto.spec import (
    CircuitSpec,
    choose_noise_bound,
    reference_argmax,
    signed_width,
    tournament_index_tables,
)
from speed.errors import InputError


def _cases(spec: CircuitSpec, rng: np.random.Generator, kind: str) -> np.ndarray:
    """Holder values (N, B, K) inside the compiled range."""
    n, b, k, a, p = spec.num_holders, spec.batch_size, spec.num_classes, spec.noise_bound, spec.resolution
    votes = np.eye(k, dtype=np.int64)[rng.integers(0, k, size=(n, b))] * p
    if kind == "random":
        noise = rng.integers(-a, a + 1, size=(n, b, k))
        noise[1:] = 0  # total noise per class stays in [-A, A]
    elif kind == "ties":  # two or more classes share the maximum exactly
        votes = np.zeros((n, b, k), dtype=np.int64)
        noise = np.zeros((n, b, k), dtype=np.int64)
        noise[0] = rng.integers(-a, p + a, size=(b, k))
        for q in range(b):
            tied = rng.choice(k, size=rng.integers(2, k + 1), replace=False)
            noise[0, q, tied] = noise[0, q].max() + (1 if noise[0, q].max() < p + a else 0)
        assert (np.sort(noise.sum(0), axis=-1)[:, -1] == np.sort(noise.sum(0), axis=-1)[:, -2]).all()
    elif kind == "near":  # maxima differing by one lattice step
        noise = np.zeros((n, b, k), dtype=np.int64)
        noise[0] = rng.integers(-1, 2, size=(b, k))
    else:  # extremes: one class at N·P + A, the others at −A, random positions
        votes = np.zeros((n, b, k), dtype=np.int64)
        winners = rng.integers(0, k, size=b)
        votes[:, np.arange(b), winners] = p
        noise = np.full((n, b, k), 0, dtype=np.int64)
        noise[0] = -a
        noise[0, np.arange(b), winners] = a
    return votes + noise


@pytest.fixture(scope="module", params=["tournament", "all-pairs", "tournament-chunks-1-2-2"])
def simulated(request):
    layout, _, chunks = request.param.partition("-chunks-")
    relu_chunks = tuple(int(c) for c in chunks.split("-")) if chunks else ()
    spec = CircuitSpec(num_holders=5, num_classes=10, noise_bound=6, batch_size=100, argmax=layout,
                       relu_chunks=relu_chunks)
    return spec, compile_module(spec, simulate=True)


@pytest.mark.parametrize("kind", ["random", "ties", "near", "extremes"])
def test_simulated_argmax_is_exact(simulated, kind):
    spec, module = simulated
    rng = np.random.default_rng({"random": 1, "ties": 2, "near": 3, "extremes": 4}[kind])
    calls = 3 if kind in ("random", "ties") else 2
    for _ in range(calls):
        values = _cases(spec, rng, kind)
        sums = values.sum(axis=0)
        low, high = spec.sum_range
        assert sums.min() >= low and sums.max() <= high
        got = np.asarray(module.aggregate.simulate(*[values[i] for i in range(spec.num_holders)]))
        np.testing.assert_array_equal(got, reference_argmax(sums))
    # 10 calls × 100 queries = 1,000 simulated queries over the four kinds, per layout


def test_compiled_bootstrap_count_matches_the_layout(simulated):
    """concrete compiles exactly the bootstraps the layout needs (no bit extracted twice: slicing
    ``fhe.bits(d)[6:9]`` separately once cost 2 more PBS per match)."""
    spec, module = simulated
    assert module.aggregate.statistics["programmable_bootstrap_count"] == spec.batch_size * spec.bootstraps_per_query


def test_parameter_search_keeps_to_the_glwe_dimensions(simulated):
    """Every bootstrap uses a GLWE dimension the spec allows (by default 1 or 2: smaller keys to
    stream per PBS); unrestricted, concrete picks dimension 4 for part of this same circuit."""
    spec, module = simulated
    assert spec.glwe_dimensions == (1, 2)
    used = {p["glwe_dimension"] for p in pbs_per_parameter(module.aggregate.statistics)}
    assert used and used <= set(spec.glwe_dimensions)
    if spec.argmax == "tournament" and not spec.relu_chunks:
        free = compile_module(CircuitSpec(**{**spec.to_dict(), "glwe_dimensions": ()}), simulate=True)
        assert max(p["glwe_dimension"] for p in pbs_per_parameter(free.aggregate.statistics)) > 2


def test_glwe_dimensions_are_checked_and_survive_json():
    spec = CircuitSpec(num_holders=5, num_classes=10, noise_bound=6, glwe_dimensions=[2, 1, 2])
    assert spec.glwe_dimensions == (1, 2)
    assert CircuitSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert CircuitSpec(num_holders=5, num_classes=10, noise_bound=6, glwe_dimensions=()).glwe_dimensions == ()
    with pytest.raises(InputError, match="GLWE dimensions"):
        CircuitSpec(num_holders=5, num_classes=10, noise_bound=6, glwe_dimensions=(0, 1))


def test_difference_width_covers_range():
    for n, p, a in [(1, 1, 0), (20, 1, 8), (250, 1, 12), (250, 1000, 9000)]:
        spec = CircuitSpec(num_holders=n, num_classes=3, noise_bound=a, resolution=p)
        w = spec.difference_width
        assert -(2 ** (w - 1)) <= -spec.difference_bound and spec.difference_bound <= 2 ** (w - 1) - 1
        assert w == signed_width(-spec.difference_bound, spec.difference_bound)
        assert spec.difference_bound > 2 ** (w - 2) - 1  # minimal


def test_noise_bound_meets_failure_probability():
    spec_args = dict(num_holders=250, num_classes=10, scale=1 / 3.3, resolution=1)
    a = choose_noise_bound(**spec_args, failure_probability=1e-12)
    spec = CircuitSpec(num_holders=250, num_classes=10, noise_bound=a)
    assert spec.histogram_failure_probability(1 / 3.3) - spec.global_p_error <= 1e-12
    smaller = CircuitSpec(num_holders=250, num_classes=10, noise_bound=a - 1)
    assert smaller.histogram_failure_probability(1 / 3.3) - smaller.global_p_error > 1e-12
    assert spec.clip_failure_probability(1 / 3.3) < 1e-30 and spec.share_bound >= spec.noise_bound
    # Monte Carlo sanity of the tail at a small bound
    from speed.privacy.noise import sample_lattice_shares

    rng = np.random.default_rng(0)
    z = sample_lattice_shares(250, 1, 1.0, 1, rng, rows=250 * 4000).reshape(4000, 250).sum(axis=1)
    empirical = np.mean(np.abs(z) > 3)
    q = np.exp(-1.0)
    assert abs(empirical - 2 * q**4 / (1 + q)) < 0.02


@pytest.mark.parametrize("k", [2, 3, 5])
def test_tournament_byes_and_ties_exhaustive(k):
    """Every sum vector in [−A, N·P + A]^K for small K (odd K exercises the byes)."""
    spec = CircuitSpec(num_holders=1, num_classes=k, noise_bound=2, batch_size=216 if k < 5 else 250)
    module = compile_module(spec, simulate=True)
    low, high = spec.sum_range
    grid = np.stack(np.meshgrid(*[np.arange(low, high + 1)] * k, indexing="ij"), axis=-1).reshape(-1, k)
    if k == 5:
        grid = np.random.default_rng(5).choice(grid, size=spec.batch_size, replace=False)
    batch = np.zeros((spec.batch_size, k), dtype=np.int64)
    batch[: len(grid)] = grid
    got = np.asarray(module.aggregate.simulate(batch))
    np.testing.assert_array_equal(got[: len(grid)], reference_argmax(grid))


def test_relu_chunks_must_cover_the_low_bits():
    spec = CircuitSpec(num_holders=5, num_classes=10, noise_bound=6, relu_chunks=[1, 2, 2])  # w = 6
    assert spec.relu_chunks == (1, 2, 2) and spec.relu_chunk_bounds == [(0, 1), (1, 3), (3, 5)]
    assert CircuitSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec  # JSON: a list
    assert CircuitSpec(num_holders=5, num_classes=10, noise_bound=6).relu_chunk_bounds == [(0, 3), (3, 5)]
    wide = CircuitSpec(num_holders=250, num_classes=10, noise_bound=9)  # w = 10: bit 0 read alone
    assert wide.difference_width == 10 and wide.relu_chunk_sizes == (1, 3, 3, 2)
    assert wide.bootstraps_per_query == 9 * 10 + 8 * 4 + 7
    with pytest.raises(InputError, match="add up"):
        _ = CircuitSpec(num_holders=5, num_classes=10, noise_bound=6, relu_chunks=(3, 3)).relu_chunk_bounds
    with pytest.raises(InputError, match="chunk sizes"):
        CircuitSpec(num_holders=5, num_classes=10, noise_bound=6, relu_chunks=(0, 5))


def test_index_tables_skip_bits_the_bracket_fixes():
    """K = 10: (0, 1) vs (2, 3) needs a table only for bit 0 (bit 1 is the sign, bits 2, 3 are 0);
    the final (0–7 vs 8, 9) needs tables for bits 0–2 (bit 3 is the sign): 1 + 1 + 2 + 3."""
    assert [tournament_index_tables(k) for k in (2, 3, 4, 5, 8, 10)] == [0, 1, 1, 3, 4, 7]


def test_unknown_argmax_layout_is_refused():
    from speed.errors import InputError

    with pytest.raises(InputError, match="argmax must be one of"):
        CircuitSpec(num_holders=3, num_classes=4, noise_bound=2, argmax="bubble")


def test_batch_error_budget_is_per_query():
    """A call of B queries is compiled for 1 − (1 − p)^B, so each query keeps failure probability p."""
    one = CircuitSpec(num_holders=4, num_classes=3, noise_bound=2, batch_size=1, global_p_error=1e-9)
    ten = CircuitSpec(num_holders=4, num_classes=3, noise_bound=2, batch_size=10, global_p_error=1e-9)
    assert one.call_p_error == pytest.approx(1e-9, rel=1e-12)
    assert ten.call_p_error == pytest.approx(1 - (1 - 1e-9) ** 10, rel=1e-9)
    assert ten.call_p_error < 10 * 1e-9
    assert ten.per_query_p_error(ten.call_p_error) == pytest.approx(1e-9, rel=1e-9)
    assert ten.per_query_p_error(1e-8) < 1e-8 / 10 * (1 + 1e-8)


@pytest.mark.parametrize("check", ["total", "classes"])
def test_range_check_bootstraps_and_honest_extremes(check):
    """K = 10, N = 250 at the paper's noise: the range check costs what the spec says (138 and 229
    PBS per query against 129), and honest sums at the extremes of the range pass it (simulation;
    out-of-range sums need real encryption: tests/test_integrity.py)."""
    from speed.bench.he import paper_spec

    spec = paper_spec(250, 10, aggregate_input="sum", range_check=check, batch_size=4)
    module = compile_module(spec, simulate=True)
    assert module.aggregate.statistics["programmable_bootstrap_count"] == spec.batch_size * spec.bootstraps_per_query
    assert spec.bootstraps_per_query == {"total": 138, "classes": 229}[check]
    a, n, k = spec.noise_bound, spec.num_holders, spec.num_classes
    sums = np.full((4, k), -a, dtype=np.int64)
    sums[0, 3] = n + a  # one class at N·P + A, the others at −A
    sums[1] = a
    sums[1, 0] = n + a  # total N·P + K·A
    sums[2, 9] = n - a  # total N·P − K·A
    sums[3] = 25 + np.arange(k) % 3 - 1  # near ties around N/K
    label, passed = module.aggregate.simulate(sums)
    np.testing.assert_array_equal(label, reference_argmax(sums))
    np.testing.assert_array_equal(passed, spec.range_check_passed)


@pytest.fixture(scope="module", params=[0, 2])
def skellam_simulated(request):
    """σ = 63 Skellam noise (integer, resolution 1): A = 450, sums in [−450, 455] (w = 11), K = 4."""
    spec = CircuitSpec(num_holders=5, num_classes=4, noise_bound=450, batch_size=128, aggregate_input="sum",
                       rounding_shift=request.param)
    return spec, compile_module(spec, simulate=True)


def test_skellam_noise_argmax_is_exact_with_and_without_rounding(skellam_simulated):
    """Exact against numpy's argmax of the same sums rounded the same way (⌊c / 2^r⌋, lowest index
    among ties), at the extremes of the compiled range, across rounding boundaries and at random."""
    spec, module = skellam_simulated
    assert spec.difference_width == 11 and spec.argmax_width == 11 - spec.rounding_shift
    assert module.aggregate.statistics["programmable_bootstrap_count"] == spec.batch_size * spec.bootstraps_per_query
    low, high = spec.sum_range
    rng = np.random.default_rng(63)
    k, b = spec.num_classes, spec.batch_size
    cases = [np.full((b, k), low), np.full((b, k), high)]
    extremes = np.full((b, k), low)
    extremes[np.arange(b), rng.integers(0, k, size=b)] = high
    cases.append(extremes)
    edges = np.array([low, low + 1, -5, -4, -3, -1, 0, 1, 3, 4, 7, 8, high - 1, high])
    cases.append(rng.choice(edges, size=(b, k)))  # values on both sides of rounding boundaries
    near = rng.integers(low, high + 1, size=(b, 1)) + rng.integers(-4, 5, size=(b, k))
    cases.append(np.clip(near, low, high))  # near ties, equal after rounding
    cases += [rng.integers(low, high + 1, size=(b, k)) for _ in range(2)]
    for sums in cases:
        got = np.asarray(module.aggregate.simulate(sums))
        np.testing.assert_array_equal(got, reference_argmax(sums, spec.rounding_shift))


def test_rounding_shift_and_skellam_bound():
    from speed.crypto.spec import skellam_noise_bound

    # ⌊3/4⌋ = 0 < ⌊4/4⌋; ⌊−5/4⌋ = ⌊−8/4⌋ = −2 tie
    assert reference_argmax(np.array([[3, 4, -1], [-5, -8, -6]]), 2).tolist() == [1, 0]
    assert 440 <= skellam_noise_bound(63, 10) <= 480 and 195 <= skellam_noise_bound(28, 10) <= 215
    spec = CircuitSpec(num_holders=250, num_classes=10, noise_bound=skellam_noise_bound(63, 10), rounding_shift=2)
    assert spec.difference_width == 12 and spec.argmax_width == 10
    assert CircuitSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(InputError, match="rounding shift"):
        CircuitSpec(num_holders=5, num_classes=4, noise_bound=450, rounding_shift=11)
