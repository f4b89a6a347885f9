"""Image datasets: the :class:`Dataset` type and one loader per source.

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

Holder shards, the public query pool and the queries themselves: :mod:`speed.learning.splits`.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speed.errors import DatasetMissingError, InputError

__all__ = ["DATASET_NAMES", "DEFAULT_DATASET", "Dataset", "load_dataset", "read_idx", "write_idx"]

DATASET_NAMES = ("digits", "fashion-mnist", "mnist", "svhn", "cifar10")
DEFAULT_DATASET = "digits"

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
