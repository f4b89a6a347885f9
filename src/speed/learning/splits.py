"""Holder partitions, the public query pool and the queries sent to the teachers.

Partition convention (PATE, Papernot et al. 2017, kept by SPEED): the data holders
split the *training* set into disjoint shards; the student's public data comes from
the *test* distribution: the test set is cut into a public **query pool** (the only
points ever sent to the teachers, labelled or used as unlabelled data by the student)
and a **test split**, disjoint from the pool, that is never queried and only measures
accuracy.

Query/label alignment: :func:`select_queries` returns a :class:`Queries` (pool
positions); the images to send to the teachers are ``queries.x``; the aggregated labels
come back through ``queries.label(labels)``, which yields a :class:`LabelledQueries`
holding the *same* positions and the labels together.  The student trains on
``labelled.x`` / ``labelled.labels``: there is no second index array that could drift.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from speed.errors import InputError
from speed.learning.datasets import Dataset

__all__ = ["LabelledQueries", "Queries", "Splits", "make_splits", "select_queries"]


@dataclass(frozen=True, eq=False)
class Splits:
    """Holder shards (train indices), public query pool and test split (test indices).

    ``holder_indices[i]`` indexes ``dataset.x_train``; ``pool_indices`` and
    ``test_indices`` index ``dataset.x_test`` and are disjoint.
    """

    dataset: Dataset = field(repr=False)
    holder_indices: tuple[np.ndarray, ...]
    pool_indices: np.ndarray
    test_indices: np.ndarray
    seed: int
    non_iid: float | None = None

    @property
    def num_holders(self) -> int:
        return len(self.holder_indices)

    def holder_data(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Holder ``i``'s private shard (images, labels)."""
        idx = self.holder_indices[i]
        return self.dataset.x_train[idx], self.dataset.y_train[idx]

    @property
    def pool_size(self) -> int:
        return len(self.pool_indices)

    @property
    def pool_x(self) -> np.ndarray:
        """Public (unlabelled) query pool images."""
        return self.dataset.x_test[self.pool_indices]

    @property
    def pool_y(self) -> np.ndarray:
        """Ground-truth labels of the pool: for measuring label accuracy only."""
        return self.dataset.y_test[self.pool_indices]

    @property
    def test_x(self) -> np.ndarray:
        return self.dataset.x_test[self.test_indices]

    @property
    def test_y(self) -> np.ndarray:
        return self.dataset.y_test[self.test_indices]

    def holder_fingerprint(self, i: int) -> str:
        """Digest of holder ``i``'s shard (dataset name + indices), for checkpoint validity."""
        h = hashlib.sha256(self.dataset.name.encode())
        h.update(np.ascontiguousarray(self.holder_indices[i], dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def make_splits(dataset: Dataset, num_holders: int, num_queries_pool: int | None = None,
                seed: int = 0, non_iid: float | None = None) -> Splits:
    """Partition ``dataset`` for ``num_holders`` data holders.

    * Holder shards: disjoint subsets of the training set.  Uniform (``non_iid=None``):
      a seeded permutation cut into ``num_holders`` nearly equal shards (sizes differ by
      at most one; the whole training set is used).  Non-IID (``non_iid=alpha``): label
      skew by a Dirichlet(alpha) draw per class over the holders (Hsu et al. 2019);
      small alpha = strong skew; redrawn until every holder has at least one example.
    * Query pool: ``num_queries_pool`` points of the test set (default: half of it).
    * Test split: the rest of the test set, never queried.

    Deterministic given ``seed``.
    """
    n_train, n_test = len(dataset.y_train), len(dataset.y_test)
    if not 1 <= num_holders <= n_train:
        raise InputError(f"num_holders must be in 1..{n_train} (training set size), got {num_holders}")
    if num_queries_pool is None:
        num_queries_pool = n_test // 2
    if not 1 <= num_queries_pool < n_test:
        raise InputError(
            f"num_queries_pool must be in 1..{n_test - 1} so that the test split is not empty, got {num_queries_pool}"
        )
    root = np.random.SeedSequence(seed)
    holder_ss, pool_ss = root.spawn(2)
    rng = np.random.default_rng(holder_ss)
    if non_iid is None:
        shards = np.array_split(rng.permutation(n_train), num_holders)
    else:
        shards = _dirichlet_shards(dataset.y_train, num_holders, float(non_iid), rng, dataset.num_classes)
    shards = tuple(np.sort(s).astype(np.int64) for s in shards)
    order = np.random.default_rng(pool_ss).permutation(n_test)
    pool = order[:num_queries_pool].astype(np.int64)
    test = np.sort(order[num_queries_pool:]).astype(np.int64)
    return Splits(dataset, shards, pool, test, seed, None if non_iid is None else float(non_iid))


def _dirichlet_shards(y: np.ndarray, n: int, alpha: float, rng: np.random.Generator,
                      num_classes: int, max_tries: int = 1000) -> list[np.ndarray]:
    if not alpha > 0:
        raise InputError(f"non-IID Dirichlet parameter alpha must be > 0, got {alpha}")
    by_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    for _ in range(max_tries):
        shards: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in by_class:
            idx = rng.permutation(idx)
            p = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for i, part in enumerate(np.split(idx, cuts)):
                shards[i].append(part)
        out = [np.concatenate(s) for s in shards]
        if min(len(s) for s in out) >= 1:
            return out
    raise InputError(
        f"non-IID split: could not give every one of {n} holders an example with alpha={alpha}; "
        "use fewer holders or a larger alpha"
    )


# ------------------------------------------------------------------------ queries


@dataclass(frozen=True, eq=False)
class Queries:
    """Pool points selected for labelling: ``positions`` index ``splits.pool_indices``."""

    splits: Splits = field(repr=False)
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def x(self) -> np.ndarray:
        """The images to send to the teachers, in query order."""
        return self.splits.pool_x[self.positions]

    @property
    def true_labels(self) -> np.ndarray:
        """Ground truth for these points (evaluation only, never for training)."""
        return self.splits.pool_y[self.positions]

    @property
    def unqueried_positions(self) -> np.ndarray:
        mask = np.ones(self.splits.pool_size, dtype=bool)
        mask[self.positions] = False
        return np.flatnonzero(mask)

    def label(self, labels: np.ndarray) -> LabelledQueries:
        """Attach the aggregated labels (one per query, in query order)."""
        labels = np.asarray(labels)
        if labels.shape != (len(self),):
            raise InputError(f"expected {len(self)} labels (one per query), got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"labels must be integers, got {labels.dtype}")
        k = self.splits.dataset.num_classes
        if len(labels) and (labels.min() < 0 or labels.max() >= k):
            raise InputError(f"labels must be in 0..{k - 1}")
        return LabelledQueries(self, labels.astype(np.int64))


@dataclass(frozen=True, eq=False)
class LabelledQueries:
    """Queried pool points and their aggregated labels, held together.

    The student's labelled training data is ``(x, labels)``; its unlabelled data is
    ``unlabelled_x`` (the pool points that were not queried).
    """

    queries: Queries
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def positions(self) -> np.ndarray:
        return self.queries.positions

    @property
    def x(self) -> np.ndarray:
        return self.queries.x

    @property
    def unlabelled_x(self) -> np.ndarray:
        return self.queries.splits.pool_x[self.queries.unqueried_positions]

    @property
    def label_accuracy(self) -> float:
        """Fraction of aggregated labels equal to the ground truth."""
        return float(np.mean(self.labels == self.queries.true_labels)) if len(self) else float("nan")


def select_queries(splits: Splits, num_queries: int, seed: int = 0) -> Queries:
    """Choose ``num_queries`` distinct pool points, deterministically from ``seed``.

    The selection is a prefix of one seeded permutation of the pool, so the first q
    queries of a run with Q > q queries are the queries of the run with q.
    """
    if not 0 <= num_queries <= splits.pool_size:
        raise InputError(f"num_queries must be in 0..{splits.pool_size} (pool size), got {num_queries}")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x51E7])).permutation(splits.pool_size)
    return Queries(splits, order[:num_queries].astype(np.int64))
