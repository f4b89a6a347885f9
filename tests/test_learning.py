"""Learning: dataset loaders, splits, query/label alignment, models, teachers, student."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from speed.errors import DatasetMissingError, InputError
from speed.learning import (
    MODELS,
    TrainConfig,
    accuracy,
    build_model,
    checkpoint_path,
    fit_student,
    load_dataset,
    make_splits,
    plurality,
    predict,
    read_idx,
    select_queries,
    teacher_votes,
    train_model,
    train_student,
    train_teachers,
    vote_counts,
    write_idx,
)
from speed.learning import augment, student, teachers
from speed.learning.models import LocalResponseNorm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_splits(digits):
    return make_splits(digits, num_holders=20, num_queries_pool=300, seed=0)


@pytest.fixture(scope="module")
def digits_teachers(digits, digits_splits):
    return train_teachers(digits, digits_splits, seed=0, progress=False, num_threads=1, workers=1)


# ----------------------------------------------------------------------- datasets


def test_digits_shapes_ranges_and_determinism(digits):
    d = digits
    assert d.name == "digits" and d.num_classes == 10 and d.in_shape == (1, 8, 8)
    assert d.x_train.shape == (1200, 1, 8, 8) and d.x_test.shape == (597, 1, 8, 8)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(np.unique(y)) == set(range(10))
    again = load_dataset("digits")
    assert np.array_equal(again.x_train, d.x_train) and np.array_equal(again.y_test, d.y_test)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip(tmp_path, suffix):
    a = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / f"a{suffix}", a)
    b = read_idx(tmp_path / f"a{suffix}")
    assert b.shape == (5, 4, 3) and np.array_equal(a, b)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(InputError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(InputError, match="size mismatch"):
        read_idx(tmp_path / "short")


def _write_tiny_mnist(directory, gz=True, n_train=12, n_test=7):
    rng = np.random.default_rng(1)
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in parts.items():
        write_idx(directory / (name + (".gz" if gz else "")), arr)
    return parts


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset_loader_on_tiny_files(tmp_path, gz, name):
    parts = _write_tiny_mnist(tmp_path, gz=gz)
    d = load_dataset(name, data_dir=tmp_path)
    assert d.name == name and d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (7, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert np.allclose(d.x_train[:, 0] * 255.0, parts["train-images-idx3-ubyte"])
    assert np.array_equal(d.y_test, parts["t10k-labels-idx1-ubyte"])
    assert 0.0 <= d.x_test.min() and d.x_test.max() <= 1.0


def test_missing_dataset_messages(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetMissingError, match="data-dir"):
        load_dataset("mnist")
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetMissingError) as err:
        load_dataset("svhn", data_dir=tmp_path)
    msg = str(err.value)
    assert "train_32x32.mat" in msg and "test_32x32.mat" in msg and str(tmp_path) in msg
    with pytest.raises(DatasetMissingError, match="extra_32x32.mat"):
        load_dataset("svhn", data_dir=tmp_path, include_extra=True)
    with pytest.raises(DatasetMissingError, match="data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("imagenet")


def test_svhn_loader_on_tiny_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)

    def write(name, n):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN labels 1..10, 10 = digit 0
        y[0, 0] = 10
        savemat(tmp_path / name, {"X": x, "y": y})
        return x, y

    xtr, ytr = write("train_32x32.mat", 5)
    xte, _ = write("test_32x32.mat", 3)
    d = load_dataset("svhn", data_dir=tmp_path)
    assert d.x_train.shape == (5, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.y_train[0] == 0 and d.y_train.max() <= 9 and d.y_train.dtype == np.int64
    expected = np.where(ytr[:, 0] == 10, 0, ytr[:, 0])
    assert np.array_equal(d.y_train, expected)
    # pixel (row 4, col 7, channel 2) of image 1
    assert d.x_train[1, 2, 4, 7] == pytest.approx(xtr[4, 7, 2, 1] / 255.0)  # (H, W, C, n) -> (n, C, H, W)
    write("extra_32x32.mat", 4)
    d2 = load_dataset("svhn", data_dir=tmp_path, include_extra=True)
    assert d2.x_train.shape == (9, 3, 32, 32) and np.array_equal(d2.x_train[:5], d.x_train)


def test_cifar10_loader_on_tiny_batches(tmp_path):
    rng = np.random.default_rng(3)
    sub = tmp_path / "cifar-10-batches-py"
    sub.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(sub / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 9]}, f)
    d = load_dataset("cifar10", data_dir=tmp_path)
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (2, 3, 32, 32)
    assert list(d.y_test) == [1, 9]


# ------------------------------------------------------------------------- splits


def test_uniform_splits_disjoint_complete_deterministic(digits):
    s = make_splits(digits, num_holders=7, num_queries_pool=250, seed=3)
    allh = np.concatenate(s.holder_indices)
    assert len(allh) == len(np.unique(allh)) == len(digits.y_train)
    sizes = [len(h) for h in s.holder_indices]
    assert max(sizes) - min(sizes) <= 1
    assert len(s.pool_indices) == 250 and len(set(s.pool_indices) & set(s.test_indices)) == 0
    assert sorted(np.concatenate([s.pool_indices, s.test_indices])) == list(range(len(digits.y_test)))
    t = make_splits(digits, num_holders=7, num_queries_pool=250, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(s.holder_indices, t.holder_indices))
    assert np.array_equal(s.pool_indices, t.pool_indices) and np.array_equal(s.test_indices, t.test_indices)
    u = make_splits(digits, num_holders=7, num_queries_pool=250, seed=4)
    assert not np.array_equal(s.pool_indices, u.pool_indices)
    x0, y0 = s.holder_data(0)
    assert np.array_equal(x0, digits.x_train[s.holder_indices[0]])
    assert np.array_equal(y0, digits.y_train[s.holder_indices[0]])
    assert np.array_equal(s.test_y, digits.y_test[s.test_indices])


def test_non_iid_splits_are_label_skewed(digits):
    s = make_splits(digits, num_holders=10, num_queries_pool=300, seed=0, non_iid=0.1)
    allh = np.concatenate(s.holder_indices)
    assert len(allh) == len(np.unique(allh)) == len(digits.y_train)
    assert all(len(h) >= 1 for h in s.holder_indices)

    def mean_max_class_share(splits):
        return np.mean([np.bincount(digits.y_train[h], minlength=10).max() / len(h) for h in splits.holder_indices])

    uniform = make_splits(digits, num_holders=10, num_queries_pool=300, seed=0)
    assert mean_max_class_share(s) > 0.4 > 0.2 > mean_max_class_share(uniform)
    again = make_splits(digits, num_holders=10, num_queries_pool=300, seed=0, non_iid=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(s.holder_indices, again.holder_indices))


def test_split_bad_arguments(digits):
    with pytest.raises(InputError):
        make_splits(digits, num_holders=0)
    with pytest.raises(InputError):
        make_splits(digits, num_holders=5, num_queries_pool=len(digits.y_test))
    with pytest.raises(InputError):
        make_splits(digits, num_holders=5, non_iid=0.0)


# ------------------------------------------------------------------------ queries


def test_query_selection_and_label_alignment(digits, digits_splits):
    s = digits_splits
    q = select_queries(s, 60, seed=5)
    assert len(q) == 60 and len(np.unique(q.positions)) == 60
    assert np.array_equal(q.positions, select_queries(s, 60, seed=5).positions)
    assert np.array_equal(select_queries(s, 100, seed=5).positions[:60], q.positions)  # prefix
    assert not np.array_equal(select_queries(s, 60, seed=6).positions, q.positions)
    # The images sent to the teachers are pool images, never test-split images.
    assert np.array_equal(q.x, digits.x_test[s.pool_indices[q.positions]])
    labels = (q.true_labels + 1) % 10  # deliberately wrong labels: they must stay attached to the same points
    lq = q.label(labels)
    assert np.array_equal(lq.x, q.x) and np.array_equal(lq.labels, labels)
    assert lq.label_accuracy == 0.0
    assert len(lq.unlabelled_x) == s.pool_size - 60
    with pytest.raises(InputError, match="60 labels"):
        q.label(labels[:-1])
    with pytest.raises(InputError):
        q.label(np.full(60, 10))
    with pytest.raises(InputError):
        select_queries(s, s.pool_size + 1)


def test_fit_student_trains_on_exactly_the_queried_points(digits_splits, monkeypatch):
    q = select_queries(digits_splits, 30, seed=1)
    lq = q.label(q.true_labels)
    seen = {}

    def fake_train_student(x, y, **kwargs):
        seen.update(x=x, y=y, **kwargs)
        return "model"

    monkeypatch.setattr(student, "train_student", fake_train_student)
    assert fit_student(lq, method="semi-supervised") == "model"
    assert np.array_equal(seen["x"], q.x) and np.array_equal(seen["y"], q.true_labels)
    pool_rows = {r.tobytes() for r in digits_splits.pool_x}
    test_rows = {r.tobytes() for r in digits_splits.test_x}
    unl = {r.tobytes() for r in seen["x_unlabelled"]}
    assert unl <= pool_rows and not (unl & test_rows) and not (unl & {r.tobytes() for r in q.x})


# ------------------------------------------------------------------------- models


@pytest.mark.parametrize("name,shape", [("digits-cnn", (1, 8, 8)), ("mlp", (1, 8, 8)),
                                        ("compact-cnn", (1, 28, 28)), ("pate-mnist", (1, 28, 28)),
                                        ("pate-svhn", (3, 32, 32))])
def test_models_build_and_output_logits(name, shape):
    m = build_model(name, shape, 10, seed=0)
    assert m(torch.zeros(2, *shape)).shape == (2, 10)
    m2 = build_model(name, shape, 10, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_paper_architectures():
    mn = build_model("pate-mnist", (1, 28, 28), 10)
    convs = [l for l in mn.modules() if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in mn.modules() if isinstance(l, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(64, (5, 5)), (128, (5, 5))]
    assert [f.out_features for f in fcs] == [384, 192, 10]
    sv = build_model("pate-svhn", (3, 32, 32), 10)
    assert len([l for l in sv.modules() if isinstance(l, torch.nn.Conv2d)]) == 7
    assert [f.out_features for f in sv.modules() if isinstance(f, torch.nn.Linear)] == [192, 192, 10]
    with pytest.raises(InputError, match="unknown model"):
        build_model("resnet", (1, 8, 8), 10)
    assert set(MODELS) >= {"digits-cnn", "pate-mnist", "pate-svhn"}


def test_fast_lrn_matches_torch():
    x = torch.randn(3, 20, 5, 5) * 3
    ours = LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0)(x)
    ref = torch.nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0)(x)
    assert torch.allclose(ours, ref, atol=1e-5)


# ----------------------------------------------------------------------- training


def test_random_flip_mirrors_about_half_and_flip_off_draws_nothing_more():
    x = torch.rand(400, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = augment.random_flip(x, gen)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # every image is itself or its mirror
    assert 150 < int(mirrored.sum()) < 250
    # without flip, weak augmentation is exactly the shift it always was (teachers stay reproducible)
    a = augment.weak_augment(x, torch.Generator().manual_seed(1))
    b = augment.random_shift(x, augment.max_shift(6), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    flipped = augment.weak_augment(x, torch.Generator().manual_seed(1), flip=True)
    assert not torch.equal(flipped, a)


def test_votes_and_counts():
    votes = np.array([[0, 1, 2], [0, 2, 2], [1, 1, 2], [1, 0, 0]])
    counts = vote_counts(votes, 3)
    assert counts.tolist() == [[2, 2, 0], [1, 2, 1], [1, 0, 3]]
    assert plurality(counts).tolist() == [0, 1, 2]  # tie -> lowest index
    with pytest.raises(InputError):
        vote_counts(votes, 2)
    with pytest.raises(InputError):
        vote_counts(votes.astype(float), 3)


def test_train_model_deterministic(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    out = []
    for _ in range(2):
        m = build_model("digits-cnn", (1, 8, 8), 10, seed=1)
        train_model(m, x, y, steps=20, batch_size=16, lr=3e-3, seed=7, augment=True)
        out.append(predict(m, digits.x_test))
    assert np.array_equal(out[0], out[1])


@pytest.mark.slow
def test_teachers_on_digits_are_accurate(digits_splits, digits_teachers):
    s = digits_splits
    assert len(digits_teachers) == 20 and digits_teachers.trained == list(range(20))
    votes = teacher_votes(digits_teachers, s.test_x)
    assert votes.shape == (20, len(s.test_y)) and votes.dtype == np.int64
    mean_acc = (votes == s.test_y).mean()
    ensemble_acc = (plurality(vote_counts(votes, 10)) == s.test_y).mean()
    # measured (seed 0, 60 examples per teacher): mean 0.86, ensemble 0.97
    assert mean_acc > 0.75
    assert ensemble_acc > 0.9
    assert accuracy(digits_teachers[0], s.test_x, s.test_y) == pytest.approx((votes[0] == s.test_y).mean())


@pytest.mark.slow
def test_checkpoint_resume_retrains_only_missing(digits, tmp_path, monkeypatch):
    s = make_splits(digits, num_holders=3, num_queries_pool=300, seed=0)
    cfg = TrainConfig(steps=10, batch_size=32, lr=3e-3)
    kw = dict(checkpoint_dir=tmp_path, progress=False, num_threads=1, workers=1)
    first = train_teachers(digits, s, config=cfg, **kw)
    assert first.trained == [0, 1, 2] and first.loaded == []
    paths = [checkpoint_path(tmp_path, i) for i in range(3)]
    assert all(p.is_file() for p in paths)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    paths[1].unlink()

    calls = []
    real = teachers._train_teacher_job

    def counting(job):
        calls.append(job["holder"])
        return real(job)

    monkeypatch.setattr(teachers, "_train_teacher_job", counting)
    second = train_teachers(digits, s, config=cfg, **kw)
    assert calls == [1] and second.trained == [1] and second.loaded == [0, 2]
    assert paths[0].stat().st_mtime_ns == mtimes[0] and paths[2].stat().st_mtime_ns == mtimes[2]
    # the retrained teacher is the same model (deterministic), the loaded ones too
    assert np.array_equal(first.votes(s.test_x), second.votes(s.test_x))

    calls.clear()
    train_teachers(digits, s, config=cfg, **kw)
    assert calls == []
    # a corrupt checkpoint and a different configuration are retrained, not trusted
    paths[2].write_bytes(b"garbage")
    train_teachers(digits, s, config=cfg, **kw)
    assert calls == [2]
    calls.clear()
    train_teachers(digits, s, config=TrainConfig(steps=11, batch_size=32, lr=3e-3), **kw)
    assert calls == [0, 1, 2]


@pytest.mark.slow
def test_worker_processes_give_the_same_teachers(digits, tmp_path):
    s = make_splits(digits, num_holders=2, num_queries_pool=300, seed=0)
    cfg = TrainConfig(steps=10, batch_size=32, lr=3e-3)
    a = train_teachers(digits, s, config=cfg, progress=False, num_threads=1, workers=1)
    b = train_teachers(digits, s, config=cfg, progress=False, num_threads=1, workers=2, checkpoint_dir=tmp_path)
    assert b.trained == [0, 1] and all(checkpoint_path(tmp_path, i).is_file() for i in range(2))
    assert np.array_equal(a.votes(s.test_x), b.votes(s.test_x))


@pytest.mark.slow
def test_students_on_digits(digits_splits, digits_teachers):
    s = digits_splits
    q = select_queries(s, 60, seed=0)
    lq = q.label(plurality(vote_counts(teacher_votes(digits_teachers, q.x), 10)))
    assert lq.label_accuracy > 0.85  # measured 0.97
    sup = fit_student(lq, method="supervised", seed=0, num_threads=1)
    semi = fit_student(lq, method="semi-supervised", seed=0, num_threads=1,
                       config=TrainConfig(steps=500, batch_size=32, lr=3e-3, augment=True))
    # measured: supervised ~0.81, semi-supervised (1000 steps) ~0.90, 500 steps ~0.85
    assert accuracy(sup, s.test_x, s.test_y) > 0.65
    assert accuracy(semi, s.test_x, s.test_y) > 0.65
    with pytest.raises(InputError, match="unlabelled"):
        train_student(lq.x, lq.labels, num_classes=10, method="semi-supervised")
    with pytest.raises(InputError, match="method"):
        train_student(lq.x, lq.labels, num_classes=10, method="gan")
