"""Shared fixtures: one small compiled circuit and keyset for the key-model tests."""

from __future__ import annotations

import numpy as np
import pytest

from speed.crypto.spec import CircuitSpec
from speed.holder import DataHolder
from speed.owner.owner import ModelOwner
from speed.privacy.noise import holder_generators
from speed.protocol import setup_parties

SMALL = dict(num_holders=3, num_classes=3, noise_bound=4, resolution=1, batch_size=2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("speed-cache")


@pytest.fixture(scope="session")
def small_spec() -> CircuitSpec:
    return CircuitSpec(**SMALL)


@pytest.fixture(scope="session")
def small_owner(small_spec, cache_dir) -> ModelOwner:
    return ModelOwner(small_spec, cache_dir=cache_dir)


def make_holders(spec: CircuitSpec, table: np.ndarray, scale: float = 0.5, seed: int = 0) -> list[DataHolder]:
    """Holders whose teacher i answers query q with table[q, i]."""
    rngs = holder_generators(seed, spec.num_holders)
    return [
        DataHolder(i, (lambda q, i=i: table[np.asarray(q, dtype=np.int64), i]), scale, rngs[i])
        for i in range(spec.num_holders)
    ]


@pytest.fixture()
def small_parties(small_owner, small_spec):
    """Fresh holders and server (fresh pad state) around the session's owner."""
    table = np.random.default_rng(7).integers(0, small_spec.num_classes, size=(32, small_spec.num_holders))
    holders = make_holders(small_spec, table)
    server = setup_parties(small_owner, holders)
    return small_owner, server, holders, table
