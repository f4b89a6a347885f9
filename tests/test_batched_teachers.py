"""Batched linear teachers (speed.learning.batched) and scattering features (speed.learning.features).

Small synthetic data only: every test runs in well under a second or two on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speed.errors import SpeedError
from speed.learning.batched import BatchedConfig, BatchedLinearTeachers, fingerprint, pad_shards
from speed.learning.datasets import Dataset
from speed.learning.splits import make_splits
from speed.learning.features import (
    FeatureCacheError,
    ScatteringSpec,
    load_feature_cache,
    project_on_pool,
    save_feature_cache,
    scattering_features,
    scattering_transform,
)

K, D = 3, 6


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, D)) * 1.5
    y = rng.integers(0, K, size=n)
    return (centres[y] + rng.normal(size=(n, D))).astype(np.float64), y.astype(np.int64)


def _shards(sizes=(9, 7, 8, 9)):
    total = sum(sizes)
    x, y = _blobs(total, 0)
    cuts = np.cumsum((0,) + tuple(sizes))
    return x, y, [np.arange(cuts[i], cuts[i + 1]) for i in range(len(sizes))]


CFG = BatchedConfig(steps=40, lr=0.05, weight_decay=1e-2, init_std=0.1)


def test_batched_equals_one_by_one():
    x, y, shards = _shards()
    xs, ys, mask = pad_shards(x, y, shards, dtype=np.float64)
    batched = BatchedLinearTeachers(len(shards), D, K, seed=5, init_std=CFG.init_std, dtype=torch.float64)
    batched.fit(xs, ys, mask, CFG)
    q, _ = _blobs(50, 1)
    votes = batched.predict(q)
    assert votes.shape == (len(shards), 50) and votes.dtype == np.int64
    for t, s in enumerate(shards):
        alone = BatchedLinearTeachers(1, D, K, seed=5, init_std=CFG.init_std, teacher_ids=[t], dtype=torch.float64)
        alone.fit(x[s][None], y[s][None], None, CFG)
        np.testing.assert_allclose(alone.weight.detach().numpy()[0], batched.weight.detach().numpy()[t],
                                   rtol=1e-9, atol=1e-11)
        np.testing.assert_array_equal(alone.predict(q)[0], votes[t])


def test_shared_inputs_match_per_teacher_inputs():
    x, y = _blobs(20, 2)
    labels = np.stack([y, (y + 1) % K])  # two students on the same points, different labels
    a = BatchedLinearTeachers(2, D, K, seed=1, dtype=torch.float64).fit(x, labels, None, CFG)
    b = BatchedLinearTeachers(2, D, K, seed=1, dtype=torch.float64).fit(np.stack([x, x]), labels, None, CFG)
    np.testing.assert_allclose(a.weight.detach().numpy(), b.weight.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(a.predict(x), b.predict(np.stack([x, x])))


def test_seeded_and_learns():
    x, y, shards = _shards()
    xs, ys, mask = pad_shards(x, y, shards)
    m1 = BatchedLinearTeachers(4, D, K, seed=3).fit(xs, ys, mask, CFG)
    m2 = BatchedLinearTeachers(4, D, K, seed=3).fit(xs, ys, mask, CFG)
    assert torch.equal(m1.weight, m2.weight)
    assert not torch.equal(BatchedLinearTeachers(4, D, K, seed=4).weight, BatchedLinearTeachers(4, D, K, seed=3).weight)
    q, qy = _blobs(200, 0)  # same centres as the training blobs
    assert m1.accuracies(q, qy).mean() > 0.6


def test_state_dict_round_trip(tmp_path):
    x, y, shards = _shards()
    xs, ys, mask = pad_shards(x, y, shards)
    m = BatchedLinearTeachers(4, D, K, seed=0).fit(xs, ys, mask, CFG)
    m.save(tmp_path / "heads.pt")
    back = BatchedLinearTeachers.load(tmp_path / "heads.pt")
    assert back.steps_done == CFG.steps and torch.equal(back.weight, m.weight)
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    other = BatchedLinearTeachers(4, D, K)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.bias, m.bias)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SpeedError):
        BatchedLinearTeachers.load(tmp_path / "bad.pt")
    with pytest.raises(SpeedError):
        BatchedLinearTeachers.load(tmp_path / "missing.pt")


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    x, y, shards = _shards()
    xs, ys, mask = pad_shards(x, y, shards, dtype=np.float64)
    fp = fingerprint(data="synthetic", config=CFG, seed=0)
    ck = tmp_path / "ck.pt"
    full = BatchedLinearTeachers(4, D, K, dtype=torch.float64).fit(xs, ys, mask, CFG)
    first = BatchedLinearTeachers(4, D, K, dtype=torch.float64)
    first.fit(xs, ys, mask, CFG, checkpoint=ck, fingerprint=fp, checkpoint_every=5, stop_after=17)
    assert first.steps_done == 17
    resumed = BatchedLinearTeachers(4, D, K, dtype=torch.float64)  # a new process: fresh init, then resume
    resumed.fit(xs, ys, mask, CFG, checkpoint=ck, fingerprint=fp)
    assert resumed.steps_done == CFG.steps
    np.testing.assert_allclose(resumed.weight.detach().numpy(), full.weight.detach().numpy(), rtol=1e-9, atol=1e-11)
    # Another fingerprint (other data or settings) never resumes from this checkpoint.
    fresh = BatchedLinearTeachers(4, D, K, dtype=torch.float64)
    fresh.fit(xs, ys, mask, CFG, checkpoint=ck, fingerprint="other", stop_after=0)
    assert fresh.steps_done == 0


def test_bad_inputs():
    m = BatchedLinearTeachers(2, D, K)
    with pytest.raises(SpeedError):
        m.fit(np.zeros((5, D)), np.zeros((2, 5), dtype=np.int64) + K, None, CFG)  # label out of range
    with pytest.raises(SpeedError):
        m.fit(np.zeros((5, D + 1)), np.zeros((2, 5), dtype=np.int64), None, CFG)
    with pytest.raises(SpeedError):
        pad_shards(np.zeros((4, D)), np.zeros(4, dtype=np.int64), [np.arange(2), np.arange(0)])


# ------------------------------------------------------------------ features


def _tiny_dataset(n_train=12, n_test=10, size=16, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset("tiny", rng.random((n_train, 1, size, size), dtype=np.float32), rng.integers(0, 3, n_train),
                   rng.random((n_test, 1, size, size), dtype=np.float32), rng.integers(0, 3, n_test), 3)


SPEC = ScatteringSpec(J=2, L=4)


def test_scattering_shape_and_determinism():
    ds = _tiny_dataset()
    f1 = scattering_transform(ds.x_test, SPEC, batch_size=3)
    f2 = scattering_transform(ds.x_test, SPEC, batch_size=10)
    # order 2, J = 2, L = 4: 1 + 8 + 16 = 25 channels of 4 x 4
    assert SPEC.channels() == 25 and f1.shape == (10, 25 * 4 * 4) == (10, SPEC.dim(ds.in_shape))
    assert f1.dtype == np.float32
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f1, scattering_transform(ds.x_test, SPEC, batch_size=3))
    assert ScatteringSpec().dim((1, 28, 28)) == 81 * 7 * 7


def test_feature_cache_round_trip_and_pool_standardisation(tmp_path):
    ds = _tiny_dataset()
    splits = make_splits(ds, 3, num_queries_pool=6, seed=0)
    first = scattering_features(ds, splits, SPEC, cache_dir=tmp_path, progress=False)
    assert not first.from_cache and first.cache_path.is_file()
    again = scattering_features(ds, splits, SPEC, cache_dir=tmp_path, progress=False)
    assert again.from_cache and again.cache_path == first.cache_path
    np.testing.assert_array_equal(first.train, again.train)
    np.testing.assert_array_equal(first.test, again.test)
    pool = first.pool(splits)
    np.testing.assert_allclose(pool.mean(axis=0), 0, atol=1e-4)  # the pool's statistics, not the shards'
    xh, yh = first.holder(splits, 1)
    assert xh.shape == (len(splits.holder_indices[1]), first.dim) and np.array_equal(yh, ds.y_train[splits.holder_indices[1]])
    # Other settings or other images: another cache entry.
    other = scattering_features(ds, splits, ScatteringSpec(J=1, L=4), cache_dir=tmp_path, progress=False)
    assert other.cache_path != first.cache_path and other.dim != first.dim


def test_pool_projection_uses_only_the_pool_and_is_keyed(tmp_path):
    ds = _tiny_dataset()
    splits = make_splits(ds, 3, num_queries_pool=6, seed=0)
    feats = scattering_features(ds, splits, SPEC, cache_dir=tmp_path, progress=False)
    proj = project_on_pool(feats, splits, 4, seed=0)
    assert proj.dim == 4 and proj.components == 4 and proj.key != feats.key and "pca4" in proj.key
    assert proj.train.shape == (len(ds.x_train), 4) and proj.test.shape == (len(ds.x_test), 4)
    # V^T (x - mean of the pool): the pool's projections are centred, the directions orthonormal
    np.testing.assert_allclose(proj.pool(splits).mean(axis=0), 0, atol=1e-4)
    pool = feats.pool(splits).astype(np.float64)
    _, _, vt = np.linalg.svd(pool - pool.mean(axis=0), full_matrices=False)
    x = feats.test.astype(np.float64) - pool.mean(axis=0)
    # the same subspace as an exact SVD: projecting back and forth agrees up to rotation
    exact = x @ vt[:4].T
    np.testing.assert_allclose(np.abs(exact), np.abs(proj.test), rtol=1e-3, atol=1e-3)
    # changing private (training) images does not change the projection of public points
    ds2 = Dataset(ds.name, ds.x_train[::-1].copy(), ds.y_train[::-1].copy(), ds.x_test, ds.y_test, ds.num_classes)
    splits2 = make_splits(ds2, 3, num_queries_pool=6, seed=0)
    proj2 = project_on_pool(scattering_features(ds2, splits2, SPEC, cache_dir=tmp_path, progress=False), splits2, 4)
    np.testing.assert_allclose(proj2.test, proj.test, rtol=1e-4, atol=1e-4)
    with pytest.raises(SpeedError, match="components"):
        project_on_pool(feats, splits, 0)
    with pytest.raises(SpeedError, match="already projected"):
        project_on_pool(proj, splits, 2)


def test_corrupt_or_missing_cache_refused(tmp_path):
    ds = _tiny_dataset()
    splits = make_splits(ds, 3, num_queries_pool=6, seed=0)
    path = scattering_features(ds, splits, SPEC, cache_dir=tmp_path, progress=False).cache_path
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # flip bits inside an array: checksum (or zip CRC) fails
    path.write_bytes(bytes(blob))
    with pytest.raises(FeatureCacheError, match="delete it"):
        scattering_features(ds, splits, SPEC, cache_dir=tmp_path, progress=False)
    path.write_bytes(b"garbage")
    with pytest.raises(FeatureCacheError) as info:
        scattering_features(ds, splits, SPEC, cache_dir=tmp_path, progress=False)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(FeatureCacheError, match="does not exist"):
        scattering_features(ds, splits, SPEC, cache_file=tmp_path / "nope.npz", progress=False)
    with pytest.raises(FeatureCacheError, match="does not exist"):
        load_feature_cache(tmp_path / "nope.npz")
    # A valid cache of other images is refused, not used.
    save_feature_cache(tmp_path / "foreign.npz", {"train": np.zeros((1, 2), np.float32)}, {"key": "x"})
    with pytest.raises(FeatureCacheError, match="other images"):
        load_feature_cache(tmp_path / "foreign.npz", expected_key="y")
    assert issubclass(FeatureCacheError, SpeedError)


# ------------------------------------------------------------- frontier script


def test_frontier_noisy_argmax_ties_and_noise_law():
    """benchmarks/frontier.py: label = np.argmax of counts + the sum of N shares (ties to the lowest class)."""
    import importlib.util
    from pathlib import Path

    from speed.privacy.mechanisms import Skellam

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "frontier.py"
    spec = importlib.util.spec_from_file_location("frontier_bench", path)
    frontier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(frontier)

    class Zero:
        vote_step = 1

        def sample_shares(self, n, k, rng):
            return np.zeros((n, k), dtype=np.int64)

    counts = np.array([[3, 3, 1], [0, 2, 2], [1, 0, 4]])
    np.testing.assert_array_equal(frontier.noisy_labels(counts, Zero(), 5, np.random.default_rng(0)), [0, 1, 2])
    # Same seed, same labels; tiny noise keeps a clear winner.
    wide = np.array([[0, 200, 0]] * 20)
    a = frontier.noisy_labels(wide, Skellam(2.0), 7, np.random.default_rng(1))
    assert np.array_equal(a, frontier.noisy_labels(wide, Skellam(2.0), 7, np.random.default_rng(1)))
    assert np.all(a == 1)
