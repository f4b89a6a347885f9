"""Datasets, holder partitions and public queries.

Everything here is offline: no download at run time.

* ``digits``        sklearn's bundled 8x8 digits (default; 1,797 images, 10 classes).
* ``fashion-mnist`` Debian package ``dataset-fashion-mnist`` (IDX files in
  ``/usr/share/datasets/fashion-mnist``), or the same four IDX files in ``data_dir``.
* ``mnist``         the four IDX files (optionally ``.gz``) in ``data_dir``.
* ``svhn``          ``train_32x32.mat`` / ``test_32x32.mat`` (+ ``extra_32x32.mat`` with
  ``include_extra=True``) in ``data_dir``; label 10 means digit 0.
* ``cifar10``       the python batches (``data_batch_1..5``, ``test_batch``) in ``data_dir``
  or in ``data_dir/cifar-10-batches-py``.

Images are float32 in [0, 1] with shape (n, C, H, W); labels are int64.

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

import gzip
import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speed.errors import DatasetMissingError, InputError

DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "svhn", "cifar10")
DEFAULT_DATASET = "digits"
#: Datasets whose classes a left-right mirror keeps (clothes, objects), where students may be
#: trained with random flips; never digits.
MIRROR_INVARIANT = frozenset({"fashion-mnist", "cifar10"})

#: Where Debian's ``dataset-fashion-mnist`` puts its IDX files.
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)

#: Size of the deterministic digits test set (the rest, 1,200 images, is training data).
DIGITS_TEST_SIZE = 597
DIGITS_SPLIT_SEED = 0

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset split into train and test parts."""

    name: str
    x_train: np.ndarray  # float32 (n, C, H, W) in [0, 1]
    y_train: np.ndarray  # int64 (n,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.ndim != 4 or x.dtype != np.float32:
                raise InputError(f"{self.name}: x_{part} must be float32 (n, C, H, W), got {x.dtype} {x.shape}")
            if y.ndim != 1 or y.dtype != np.int64 or len(y) != len(x):
                raise InputError(f"{self.name}: y_{part} must be int64 (n,) matching x_{part}")
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise InputError(f"{self.name}: y_{part} has labels outside 0..{self.num_classes - 1}")

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"shape={self.in_shape}, classes={self.num_classes})"
        )


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Header: two zero bytes, a type code, the number of dimensions d, then d big-endian
    uint32 sizes; the data follows in big-endian order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    code, ndim = raw[2], raw[3]
    if code not in dtypes:
        raise InputError(f"{path}: unknown IDX data type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(dtypes[code])
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise InputError(f"{path}: IDX size mismatch: header says {shape}, file has {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip if the name ends in ``.gz``); used by tests."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    # Canonical names, plus the "train-images.idx3-ubyte" spelling some mirrors use.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_idx_dataset(name: str, directories: list[Path], hint: str) -> Dataset:
    for directory in directories:
        found = {key: _find_idx_file(directory, stem) for key, stem in _IDX_FILES.items()}
        if all(found.values()):
            break
    else:
        where = " or ".join(str(d) for d in directories) or "(no directory given)"
        expected = ", ".join(f"{s}[.gz]" for s in _IDX_FILES.values())
        raise DatasetMissingError(f"{name}: expected {expected} in {where}; {hint}")
    arrays = {key: read_idx(path) for key, path in found.items()}
    x_train, x_test = (arrays[k] for k in ("x_train", "x_test"))
    if x_train.ndim != 3 or x_test.ndim != 3:
        raise InputError(f"{name}: image IDX files must be 3-dimensional (n, H, W)")
    return Dataset(
        name=name,
        x_train=_to_float_images(x_train[:, None]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=_to_float_images(x_test[:, None]),
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
    )


def _to_float_images(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(255.0)


# ------------------------------------------------------------------------ loaders


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None]  # pixel values 0..16
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return Dataset("digits", np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test, 10)


def _load_svhn(directory: Path | None, include_extra: bool) -> Dataset:
    files = ["train_32x32.mat", "test_32x32.mat"] + (["extra_32x32.mat"] if include_extra else [])
    if directory is None or not all((directory / f).is_file() for f in files):
        where = str(directory) if directory is not None else "(no --data-dir given)"
        raise DatasetMissingError(
            f"svhn: expected {', '.join(files)} in {where}; "
            "download them from http://ufldl.stanford.edu/housenumbers/ and pass their directory"
        )
    from scipy.io import loadmat

    def part(filename: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(directory / filename)
        x = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, n) -> (n, C, H, W)
        y = mat["y"].reshape(-1).astype(np.int64)
        y[y == 10] = 0
        return _to_float_images(x), y

    x_train, y_train = part("train_32x32.mat")
    if include_extra:
        x_extra, y_extra = part("extra_32x32.mat")
        x_train, y_train = np.concatenate([x_train, x_extra]), np.concatenate([y_train, y_extra])
    x_test, y_test = part("test_32x32.mat")
    return Dataset("svhn", x_train, y_train, x_test, y_test, 10)


def _load_cifar10(directory: Path | None) -> Dataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    candidates = [] if directory is None else [directory, directory / "cifar-10-batches-py"]
    for d in candidates:
        if all((d / n).is_file() for n in names):
            break
    else:
        where = str(directory) if directory is not None else "(no --data-dir given)"
        raise DatasetMissingError(
            f"cifar10: expected the python batches {', '.join(names)} in {where} "
            "(or its cifar-10-batches-py/ subdirectory)"
        )

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(d / name, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        x = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return x, np.asarray(entry[b"labels"], dtype=np.int64)

    train = [batch(n) for n in names[:5]]
    x_test, y_test = batch("test_batch")
    return Dataset(
        "cifar10",
        _to_float_images(np.concatenate([x for x, _ in train])),
        np.concatenate([y for _, y in train]),
        _to_float_images(x_test),
        y_test,
        10,
    )


def load_dataset(name: str = DEFAULT_DATASET, data_dir: str | os.PathLike | None = None, *,
                 include_extra: bool = False) -> Dataset:
    """Load a dataset by name (see the module docstring for names and expected files).

    ``data_dir`` is required for ``mnist``, ``svhn`` and ``cifar10``; for ``fashion-mnist``
    it overrides the Debian package's directory.  ``include_extra`` adds SVHN's 531,131
    ``extra`` images to its training set, as the paper does (about 6.5 GB as float32).
    Raises :class:`DatasetMissingError` naming the directory and the expected files.
    """
    directory = Path(data_dir).expanduser() if data_dir is not None else None
    if name == "digits":
        return _load_digits()
    if name == "fashion-mnist":
        dirs = [directory] if directory is not None else list(FASHION_MNIST_DIRS)
        return _load_idx_dataset(
            name, dirs, "install Debian's package with `apt-get install dataset-fashion-mnist` or pass --data-dir"
        )
    if name == "mnist":
        return _load_idx_dataset(
            name, [directory] if directory is not None else [],
            "download the four MNIST IDX files and pass their directory with --data-dir",
        )
    if name == "svhn":
        return _load_svhn(directory, include_extra)
    if name == "cifar10":
        return _load_cifar10(directory)
    raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")


# ------------------------------------------------------------------------- splits


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
