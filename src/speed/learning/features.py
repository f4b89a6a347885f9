"""Features that cost no privacy: a fixed wavelet scattering transform.

A scattering transform (Mallat 2012; Bruna & Mallat 2013) is a fixed cascade of wavelet
convolutions and moduli: it has no trainable parameter and depends on no data, so features
computed with it leak nothing about any holder's shard.  Tramèr & Boneh (ICLR 2021, "Differentially
private learning needs better features") showed that linear models on scattering features beat
end-to-end private CNNs on MNIST, Fashion-MNIST and CIFAR-10.  Here each holder trains a linear
head on the scattering features of its own shard (:mod:`speed.learning.batched` trains all heads
at once); the student can use the same features.

Transform: kymatio's ``ScatteringTorch2D`` (pinned ``kymatio==0.3.0``).  kymatio 0.3.0's
top-level ``kymatio.torch`` import fails with SciPy >= 1.15 (it imports ``scipy.special.sph_harm``
for the 3-D transform, which SciPy removed), so the 2-D frontend is imported directly from
``kymatio.scattering2d.frontend.torch_frontend``.  With J = 2, L = 8 and order 2, a 28 × 28 image
gives 81 channels of 7 × 7 coefficients: D = 3,969 features.

Standardisation: each feature is centred and scaled with its mean and standard deviation over the
**public query pool** (test-set points the owner may send to the teachers anyway), never with
statistics of private shards.

Projection (the default recipe of ``speed reproduce``): the standardised features are projected on
the top principal components of the **public pool** (:func:`project_on_pool`; 256 by default).
Only public images enter the projection, so it costs no privacy either.  Measured on
Fashion-MNIST, N = 250 (``benchmarks/teacher_projection.py``, both side by side in one run): the
teachers' plurality is 85.5 % against 84.8 % on all 3,969 features, and the 250 heads train about
11 times faster (28 s against 316 s), since each holder fits 256 × 10 weights to its ~240 images
instead of 3,969 × 10.

Cache: the raw (unstandardised) features of a dataset are stored in
``CACHE_DIR/features/scattering-<key>.npz`` with the SHA-256 of each array; the key covers the
dataset's images (digest of their bytes), the transform's settings and kymatio's version.  A
cache file that exists but cannot be read or whose checksum differs raises
:class:`FeatureCacheError` (a :class:`speed.errors.SpeedError`, one line) naming the file: it is
never silently recomputed over, since a corrupt cache usually means a disk or copy problem the
user should know about.  Delete the file to recompute.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speed.errors import InputError, SpeedError
from speed.fsutil import atomic_path

#: The kymatio release this module is written and tested against (pinned in pyproject.toml).
KYMATIO_VERSION = "0.3.0"
#: Bump when the cache's layout or the transform's conventions change.
FEATURE_FORMAT = 1
#: Principal components of the public pool kept by :func:`project_on_pool` (the default recipe).
POOL_COMPONENTS = 256

__all__ = [
    "FEATURE_FORMAT", "KYMATIO_VERSION", "POOL_COMPONENTS", "FeatureCacheError", "FeatureSet", "ScatteringSpec",
    "feature_cache_path", "load_feature_cache", "pool_statistics", "project_on_pool", "save_feature_cache",
    "scattering_features", "scattering_transform", "standardise",
]


class FeatureCacheError(SpeedError):
    """A feature cache that is missing where one was required, unreadable, or fails its checksum."""


@dataclass(frozen=True)
class ScatteringSpec:
    """Settings of the scattering transform: scale J (output is H / 2^J × W / 2^J), L angles,
    order 1 or 2."""

    J: int = 2
    L: int = 8
    max_order: int = 2

    def __post_init__(self) -> None:
        if int(self.J) != self.J or self.J < 1:
            raise InputError(f"scattering J must be a positive integer, got {self.J!r}")
        if int(self.L) != self.L or self.L < 1:
            raise InputError(f"scattering L must be a positive integer, got {self.L!r}")
        if self.max_order not in (1, 2):
            raise InputError(f"scattering max_order must be 1 or 2, got {self.max_order!r}")

    def channels(self) -> int:
        """Scattering channels per input channel: 1 + JL (+ L²J(J−1)/2 at order 2)."""
        first = self.J * self.L
        second = self.L * self.L * self.J * (self.J - 1) // 2 if self.max_order == 2 else 0
        return 1 + first + second

    def dim(self, in_shape: tuple[int, int, int]) -> int:
        """Feature dimension for images of shape (C, H, W)."""
        c, h, w = in_shape
        return c * self.channels() * (h // 2**self.J) * (w // 2**self.J)


def _scattering_class():
    try:
        from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
    except ImportError as exc:  # pragma: no cover - environment problem
        raise SpeedError(
            f"the scattering features need kymatio=={KYMATIO_VERSION} "
            f"(pip install kymatio=={KYMATIO_VERSION}): {exc}"
        ) from None
    return ScatteringTorch2D


def kymatio_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kymatio")
    except PackageNotFoundError:  # pragma: no cover
        return "missing"


def scattering_transform(x: np.ndarray, spec: ScatteringSpec = ScatteringSpec(), *, batch_size: int = 512,
                         progress: bool = False, desc: str = "scattering") -> np.ndarray:
    """Scattering coefficients of images ``x`` (float (n, C, H, W)), flattened: float32 (n, D).

    Computed ``batch_size`` images at a time (memory stays bounded); deterministic (no randomness,
    same result whatever the batch size up to float rounding of the FFTs).
    """
    import torch
    from tqdm.auto import tqdm

    x = np.asarray(x)
    if x.ndim != 4:
        raise InputError(f"images must have shape (n, C, H, W), got {x.shape}")
    n, c, h, w = x.shape
    if min(h, w) < 2**spec.J:
        raise InputError(f"images of {h} × {w} are too small for a scattering transform with J = {spec.J}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    module = _scattering_class()(J=spec.J, shape=(h, w), L=spec.L, max_order=spec.max_order)
    out = np.empty((n, spec.dim((c, h, w))), dtype=np.float32)
    with torch.no_grad(), tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, n, batch_size):
            xb = torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32))
            sb = module(xb)  # (b, C, P, H/2^J, W/2^J)
            out[start:start + len(xb)] = sb.reshape(len(xb), -1).numpy()
            bar.update(len(xb))
    return out


# -------------------------------------------------------------------------- cache


def _digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def cache_key(dataset, spec: ScatteringSpec) -> str:
    """Digest of everything the raw features depend on: the images, the settings, kymatio."""
    blob = json.dumps({
        "format": FEATURE_FORMAT, "kymatio": kymatio_version(), "spec": asdict(spec), "dataset": dataset.name,
        "x_train": _digest(dataset.x_train), "x_test": _digest(dataset.x_test),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def feature_cache_path(cache_dir: str | os.PathLike, dataset_name: str, key: str) -> Path:
    return Path(cache_dir) / "features" / f"scattering-{dataset_name}-{key[:16]}.npz"


def save_feature_cache(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and ``meta`` (plus each array's SHA-256) atomically to ``path``."""
    meta = dict(meta, format=FEATURE_FORMAT, sha256={k: _digest(v) for k, v in arrays.items()})
    with atomic_path(path, suffix=".npz") as tmp:  # the suffix: np.savez would append ".npz" otherwise
        np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8), **arrays)


def load_feature_cache(path: str | os.PathLike, expected_key: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read a cache written by :func:`save_feature_cache`, verifying every array's checksum.

    Raises :class:`FeatureCacheError` (one line) if the file is missing, unreadable, truncated,
    fails a checksum, or (``expected_key``) belongs to other images or settings.
    """
    path = Path(path)
    if not path.is_file():
        raise FeatureCacheError(f"feature cache {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise FeatureCacheError(
            f"feature cache {path} is corrupt ({type(exc).__name__}: {exc}); delete it to recompute"
        ) from None
    sums = meta.get("sha256") if isinstance(meta, dict) else None
    if meta.get("format") != FEATURE_FORMAT or not isinstance(sums, dict) or set(sums) != set(arrays):
        raise FeatureCacheError(f"feature cache {path} has an unknown layout; delete it to recompute")
    for k, a in arrays.items():
        if _digest(a) != sums[k]:
            raise FeatureCacheError(f"feature cache {path}: array {k!r} fails its checksum; delete it to recompute")
    if expected_key is not None and meta.get("key") != expected_key:
        raise FeatureCacheError(
            f"feature cache {path} was computed from other images or settings; delete it to recompute"
        )
    return arrays, meta


# ------------------------------------------------------------------ standardise


def pool_statistics(pool_features: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (floored at ``eps``) over public-pool features."""
    f = np.asarray(pool_features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise InputError(f"pool features must be (n >= 2, D), got {f.shape}")
    mean = f.mean(axis=0)
    std = np.maximum(f.std(axis=0), eps)
    return mean.astype(np.float32), std.astype(np.float32)


def standardise(features: np.ndarray, mean: np.ndarray, std: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """(features − mean) / std, float32; in place when asked (for GB-sized arrays)."""
    out = features if inplace else np.array(features, dtype=np.float32, copy=True)
    if out.dtype != np.float32:
        raise InputError("standardise(inplace=True) needs float32 features")
    out -= mean
    out /= std
    return out


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Standardised scattering features of a dataset's train and test images.

    ``train[i]`` are the features of ``dataset.x_train[i]``, ``test[j]`` of ``dataset.x_test[j]``
    (pool and test split alike); ``mean``/``std`` are the public pool's statistics used.
    """

    train: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)
    std: np.ndarray = field(repr=False)
    spec: ScatteringSpec
    key: str
    cache_path: Path | None
    from_cache: bool
    transform_seconds: float
    components: int | None = None  # principal components of the pool kept (None: not projected)
    projection_seconds: float = 0.0

    @property
    def dim(self) -> int:
        return self.train.shape[1]

    def holder(self, splits, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Holder ``i``'s features and labels."""
        idx = splits.holder_indices[i]
        return self.train[idx], splits.dataset.y_train[idx]

    def pool(self, splits) -> np.ndarray:
        return self.test[splits.pool_indices]

    def test_split(self, splits) -> np.ndarray:
        return self.test[splits.test_indices]


def scattering_features(dataset, splits, spec: ScatteringSpec = ScatteringSpec(), *,
                        cache_dir: str | os.PathLike | None = None, cache_file: str | os.PathLike | None = None,
                        require_cache: bool = False, batch_size: int = 512, progress: bool = True) -> FeatureSet:
    """Scattering features of every image of ``dataset``, standardised with the statistics of
    ``splits``' public pool.

    The raw features come from ``cache_file`` or from ``CACHE_DIR/features/`` when a valid cache
    exists there, else they are computed (about 2 ms per 28 × 28 image on 2 cores) and cached.
    ``require_cache`` (or an explicit ``cache_file``) makes a missing cache an error instead.
    """
    if splits.dataset is not dataset and splits.dataset.name != dataset.name:
        raise InputError("splits were made from another dataset")
    key = cache_key(dataset, spec)
    path = Path(cache_file) if cache_file is not None else (
        feature_cache_path(cache_dir, dataset.name, key) if cache_dir is not None else None)
    if (require_cache or cache_file is not None) and (path is None or not path.is_file()):
        raise FeatureCacheError(f"feature cache {path} does not exist" if path is not None
                                else "a feature cache is required but no cache directory was given")
    seconds = 0.0
    if path is not None and path.is_file():
        arrays, meta = load_feature_cache(path, expected_key=key)
        if set(arrays) != {"train", "test"}:
            raise FeatureCacheError(f"feature cache {path} lacks the train/test arrays; delete it to recompute")
        train, test, from_cache = arrays["train"], arrays["test"], True
        seconds = float(meta.get("transform_seconds", 0.0))
    else:
        t0 = time.perf_counter()
        train = scattering_transform(dataset.x_train, spec, batch_size=batch_size, progress=progress,
                                     desc=f"scattering {dataset.name} train")
        test = scattering_transform(dataset.x_test, spec, batch_size=batch_size, progress=progress,
                                    desc=f"scattering {dataset.name} test")
        seconds, from_cache = time.perf_counter() - t0, False
        if path is not None:
            save_feature_cache(path, {"train": train, "test": test},
                               {"key": key, "dataset": dataset.name, "spec": asdict(spec),
                                "kymatio": kymatio_version(), "transform_seconds": seconds})
    expected = spec.dim(dataset.in_shape)
    if train.shape != (len(dataset.x_train), expected) or test.shape != (len(dataset.x_test), expected):
        raise FeatureCacheError(f"feature cache {path} has shapes {train.shape}, {test.shape}; delete it to recompute")
    mean, std = pool_statistics(test[splits.pool_indices])
    train = standardise(np.asarray(train, dtype=np.float32), mean, std, inplace=True)
    test = standardise(np.asarray(test, dtype=np.float32), mean, std, inplace=True)
    return FeatureSet(train, test, mean, std, spec, key, path, from_cache, seconds)


def project_on_pool(feats: FeatureSet, splits, components: int = POOL_COMPONENTS, *, seed: int = 0) -> FeatureSet:
    """``feats`` projected on the top ``components`` principal components of the public pool.

    With P the pool's standardised features (n × D, centred by construction) and V the D × c
    matrix of its top right singular vectors (randomized SVD, Halko et al. 2011, through
    scikit-learn's ``PCA(svd_solver="randomized", random_state=seed)``), every feature vector x
    becomes Vᵀx (train and test alike).  Only public-pool images determine V, so the projection
    costs no privacy.  The result's ``key`` extends ``feats.key`` with the component count, so
    checkpoints and students keyed by it never mix projected and unprojected features.
    """
    from sklearn.decomposition import PCA

    if feats.components is not None:
        raise InputError("these features are already projected")
    pool = feats.pool(splits)
    if not isinstance(components, int) or isinstance(components, bool) or not 1 <= components <= min(pool.shape):
        raise InputError(f"components must be an integer in 1..{min(pool.shape)} (pool size × feature dimension), "
                         f"got {components!r}")
    t0 = time.perf_counter()
    pca = PCA(n_components=components, svd_solver="randomized", random_state=seed).fit(pool)
    v = pca.components_.T.astype(np.float32)  # (D, c)
    shift = (pca.mean_.astype(np.float32) @ v)
    train = feats.train @ v - shift
    test = feats.test @ v - shift
    return FeatureSet(train, test, feats.mean, feats.std, feats.spec, f"{feats.key}-pool-pca{components}-s{seed}",
                      feats.cache_path, feats.from_cache, feats.transform_seconds, components,
                      time.perf_counter() - t0)
