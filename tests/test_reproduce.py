"""``speed reproduce``: settings and cache keys, Skellam / lattice noise, scattering / CNN teachers, report
files, resume (teachers, votes, labels, ledger) and never reusing work made with other settings, CLI errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from speed.cli.main import main
from speed.errors import InputError, SpeedError
from speed.privacy.ledger import PrivacyLedger
from speed.reproduce import ReproduceConfig, curve_queries, reproduce
from speed.reproduce.store import LabelStore, StageCache

# ------------------------------------------------------------------------------ fast


def test_defaults_follow_spec_section_6():
    fm = ReproduceConfig(dataset="fashion-mnist").resolved()
    assert fm.holders == 250 and fm.queries == (100,) and fm.gamma == 3.3 and fm.delta == 1e-5
    assert fm.taus == (1.0, 0.9, 0.7)
    # publishable noise and the measured-best teachers by default (issues 19 §4, 21 §1)
    assert fm.mechanism == "skellam" and fm.target_epsilon == 4.0 and fm.teachers == "scattering"
    assert fm.methods == ("linear", "linear-self-training")  # on the teachers' free features
    assert ReproduceConfig(dataset="mnist").resolved().teachers == "scattering"
    assert ReproduceConfig().resolved().teachers == "cnn" and ReproduceConfig().resolved().target_epsilon == 8.0
    assert ReproduceConfig(dataset="svhn").resolved().teachers == "cnn"
    assert ReproduceConfig(dataset="svhn").resolved().queries == (500,)
    assert ReproduceConfig(dataset="svhn").resolved().include_extra is True
    d = ReproduceConfig().resolved()
    assert d.dataset == "digits" and 20 <= d.holders <= 50


def test_curve_is_prefixes_of_the_largest_q():
    cfg = ReproduceConfig(queries=(60, 30), curve_points=4).resolved()
    assert curve_queries(cfg) == [8, 15, 30, 60]
    assert curve_queries(ReproduceConfig(queries=(6,), curve_points=0).resolved()) == [6]


def test_state_key_ignores_accounting_only_settings():
    a = ReproduceConfig(queries=(10,), taus=(1.0,), mechanism="lattice").resolved()
    b = ReproduceConfig(queries=(60, 30), taus=(0.7,), plaintext_check=True, mechanism="lattice").resolved()
    assert a.state_key() == b.state_key()  # labels do not depend on Q (prefix-stable) nor on τ
    lat = dict(mechanism="lattice")
    assert a.state_key() != ReproduceConfig(gamma=2.0, **lat).resolved().state_key()
    assert a.state_key() != ReproduceConfig(teacher_steps=10, **lat).resolved().state_key()
    assert a.state_key() != ReproduceConfig(model="mlp", **lat).resolved().state_key()  # other teachers, other labels


def test_lattice_cnn_runs_keep_their_state_key():
    """The paper's configuration resumes the label stores and ledgers of earlier versions."""
    assert ReproduceConfig(mechanism="lattice", teachers="cnn").resolved().state_key() == "digits-N20-s0-7b2e63165b"
    assert (ReproduceConfig(dataset="fashion-mnist", mechanism="lattice", teachers="cnn").resolved().state_key()
            == "fashion-mnist-N250-s0-258d3155a7")


def test_state_key_covers_noise_plan_and_teachers():
    base = ReproduceConfig(sigma=3.0, queries=(6,)).resolved()
    keys = {
        base.state_key(),
        ReproduceConfig(sigma=4.0, queries=(6,)).resolved().state_key(),  # other noise
        ReproduceConfig(sigma=3.0, queries=(8,)).resolved().state_key(),  # other plan (the ledger refuses a change)
        ReproduceConfig(sigma=3.0, queries=(6,), taus=(0.9,)).resolved().state_key(),
        ReproduceConfig(sigma=3.0, queries=(6,), teachers="scattering").resolved().state_key(),
        ReproduceConfig(sigma=3.0, queries=(6,), teachers="scattering", teacher_steps=5).resolved().state_key(),
        ReproduceConfig(mechanism="lattice", queries=(6,)).resolved().state_key(),
    }
    assert len(keys) == 7
    # Q prefixes of the same plan, τ grid and the students do not change the labels
    assert base.state_key() == ReproduceConfig(sigma=3.0, queries=(6, 3), curve_points=0,
                                               methods=("supervised",)).resolved().state_key()


def test_skellam_sigma_is_calibrated_for_the_plan():
    from speed.privacy.calibrate import calibrate
    from speed.privacy.pld import publishable_epsilon

    cfg = ReproduceConfig(queries=(20, 10), taus=(1.0, 0.8), target_epsilon=6.0).resolved()
    noise = cfg.noise()
    want = calibrate("skellam", 6.0, 20, 1e-5, 0.8)[0]  # the largest Q at the smallest τ
    assert noise == want and cfg.run_config().sigma == noise.sigma
    assert publishable_epsilon(noise, 20, 1e-5, 0.8) <= 6.0 + 1e-9
    assert ReproduceConfig(sigma=2.5).resolved().noise().sigma == 2.5
    lat = ReproduceConfig(mechanism="lattice", gamma=3.3).resolved()
    assert lat.noise().to_dict() == {"mechanism": "lattice", "gamma": 3.3, "resolution": 1}
    assert "--mechanism lattice --gamma 3.3" in lat.command_line()
    assert "--mechanism skellam --target-epsilon 6" in cfg.command_line()


@pytest.mark.parametrize("kwargs, match", [
    (dict(mechanism="lattice", sigma=2.0), "--sigma applies to --mechanism skellam"),
    (dict(sigma=2.0, target_epsilon=3.0), "not both"),
    (dict(mechanism="lattice", target_epsilon=3.0), "--target-epsilon applies"),
    (dict(mechanism="gaussian"), "--mechanism"),
    (dict(teachers="resnet"), "--teachers"),
    (dict(teachers="cnn", methods=("linear",)), "need --teachers scattering"),
    (dict(teachers="cnn", features="x.npz"), "--features applies"),
    (dict(teachers="scattering", features="/nonexistent/f.npz"), "--features"),
])
def test_bad_noise_and_teacher_settings(kwargs, match):
    with pytest.raises(InputError, match=match):
        ReproduceConfig(**kwargs).resolved()


def test_teacher_recipe_is_part_of_the_state(monkeypatch):
    from speed.learning import teachers as train

    from speed.reproduce import config

    a = ReproduceConfig(dataset="fashion-mnist", teachers="cnn", sigma=30.0).resolved()
    key = a.state_key()
    monkeypatch.setitem(train.TEACHER_CONFIG, "fashion-mnist",
                        train.TrainConfig(steps=600, batch_size=64, lr=0.08, optimizer="sgd"))
    assert a.state_key() != key  # a new default recipe never reuses labels of the old teachers
    b = ReproduceConfig(dataset="fashion-mnist", sigma=30.0).resolved()
    key = b.state_key()
    monkeypatch.setitem(config.SCATTERING_TEACHER, "lr", 0.02)
    assert b.state_key() != key  # same for the scattering recipe


def test_unknown_model_is_one_line_error():
    with pytest.raises(InputError, match="unknown model 'resnet'"):
        ReproduceConfig(model="resnet").resolved()


def test_label_store_resume_and_torn_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = LabelStore(path, "k", {})
    store.append(0, np.array([5, 7]), np.array([1, 2]), np.array([1, 2]), np.zeros((2, 3)), {"wall_s": 1.0},
                 {"x_per_query": 10.0})
    store.append(1, np.array([9]), np.array([0]), np.array([0]), np.ones((1, 3)), {"wall_s": 2.0},
                 {"x_per_query": 40.0})
    with open(path, "ab") as f:
        f.write(b'{"batch": 2, "positions": [1')  # killed mid-write
    again = LabelStore(path, "k", {})
    assert again.repaired_bytes > 0 and again.next_batch == 2 and 9 in again and 1 not in again
    got = again.lookup(np.array([9, 5]))
    assert got["labels"].tolist() == [0, 1] and got["clear_noisy_sums"].shape == (2, 3)
    assert again.totals()["wall_s"] == 3.0
    assert again.sizes()["x_per_query"] == pytest.approx(20.0)  # weighted by queries per batch
    with pytest.raises(SpeedError, match="another run"):
        LabelStore(path, "other", {})


def test_stage_cache_is_keyed(tmp_path):
    c = StageCache(tmp_path / "s.json", "a")
    c.put("x", {"v": 1})
    assert StageCache(tmp_path / "s.json", "a").get("x") == {"v": 1}
    assert StageCache(tmp_path / "s.json", "b").get("x") is None


def _stage_inputs(tmp_path, **kw):
    from speed.reproduce import teachers as tstage

    cfg = ReproduceConfig(dataset="digits", holders=3, queries=(4,), sigma=2.0, teachers="scattering",
                          teacher_steps=5, cache_dir=str(tmp_path / "cache"), output=str(tmp_path / "out"),
                          **kw).resolved()
    data = tstage.stage_data(cfg)
    return cfg, data, tstage


def test_scattering_teachers_and_votes_are_keyed_by_settings(tmp_path):
    """Same settings: teachers and votes come back from their caches; other settings: never reused."""
    cfg, data, tstage = _stage_inputs(tmp_path)
    state = tmp_path / "state"
    t1 = tstage.stage_teachers(cfg, data, tstage.stage_features(cfg, data, False, print), False, print)
    v1 = tstage.stage_votes(cfg, data, t1, state, lambda m: None)
    assert t1.info["trained_now"] == 3 and not v1.from_cache
    assert v1.pool.shape == (3, data.splits.pool_size) and v1.test.shape == (3, len(data.splits.test_y))
    with np.load(v1.path) as z:  # saved in the run's state, int16, with the indices they refer to
        assert z["pool_votes"].dtype == np.int16 and np.array_equal(z["pool_indices"], data.splits.pool_indices)
    # the holders' own predictors agree with the batched votes
    x = t1.pool_inputs[:50]
    assert np.mean(np.stack([p(x) for p in t1.predictors]) == v1.pool[:, :50]) > 0.99
    t2 = tstage.stage_teachers(cfg, data, tstage.stage_features(cfg, data, False, print), False, print)
    v2 = tstage.stage_votes(cfg, data, t2, state, lambda m: None)
    assert t2.info["loaded_from_checkpoints"] == 3 and t2.digest == t1.digest and v2.from_cache
    np.testing.assert_array_equal(v2.pool, v1.pool)
    cfg3, data3, _ = _stage_inputs(tmp_path, seed=1)  # other shards and initialisation
    t3 = tstage.stage_teachers(cfg3, data3, tstage.stage_features(cfg3, data3, False, print), False, print)
    assert t3.info["trained_now"] == 3 and t3.info["checkpoint"] != t1.info["checkpoint"]
    cfg4 = ReproduceConfig(**{**cfg.__dict__, "teacher_steps": 7}).resolved()  # other recipe
    t4 = tstage.stage_teachers(cfg4, data, tstage.stage_features(cfg4, data, False, print), False, print)
    v4 = tstage.stage_votes(cfg4, data, t4, state, lambda m: None)
    assert t4.info["trained_now"] == 3 and t4.digest != t1.digest and v4.path != v1.path and not v4.from_cache


def test_linear_students_baseline_is_their_head_on_all_training_images(tmp_path):
    """Scattering teachers: features projected on the pool's principal components; the linear
    students' non-private baseline is the same linear head on every training image, cached."""
    from speed.reproduce import students

    cfg, data, tstage = _stage_inputs(tmp_path)
    feats = tstage.stage_features(cfg, data, False, print)
    assert feats.components == min(feats.dim, data.splits.pool_size) and "pca" in feats.key
    teachers = tstage.stage_teachers(cfg, data, feats, False, print)
    assert teachers.pool_inputs.shape[1] == feats.dim and "principal components" in teachers.info["model"]

    class Stages(dict):
        def put(self, key, value):
            self[key] = value

    stages = Stages()
    base = students.stage_baseline(cfg, data, stages, lambda m: None, teachers)
    assert base["model"].startswith("linear head") and base["training_images"] == len(data.dataset.y_train)
    assert base["config"] == students.FEATURE_BASELINE and 0.5 < base["accuracy"] <= 1.0  # digits: easy
    assert list(stages.values()) == [base]
    again = students.stage_baseline(cfg, data, stages, lambda m: None, teachers)
    assert again == base and len(stages) == 1  # from the stage store


def test_corrupt_feature_cache_is_one_line_error(capsys, tmp_path):
    bad = tmp_path / "features.npz"
    bad.write_bytes(b"not a zip file")
    args = ["reproduce", "--dataset", "digits", "--holders", "3", "--queries", "2", "--sigma", "2",
            "--teachers", "scattering", "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "o")]
    assert main([*args, "--features", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: feature cache") and "corrupt" in err[-1]
    assert not (tmp_path / "o").exists()
    assert main([*args, "--features", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --features") and "does not exist" in err[-1]
    assert main([*args, "--teachers", "resnet"]) == 2
    assert "--teachers" in capsys.readouterr().err


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert main(["reproduce", "--queries", "0", "--cache-dir", str(tmp_path), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert main(["reproduce", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                 "--cache-dir", str(tmp_path), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "train-images-idx3-ubyte" in err


# ---------------------------------------------------------------------- end to end


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_reproduce_digits_tiny_end_to_end_and_resume(tmp_path, monkeypatch):
    """4 holders, real TFHE. Run 1 labels 4 queries; run 2 is killed after the ledger charged its
    batch but before the labels were stored; run 3 resumes: no teacher retrained, the 4 stored labels
    reused, the lost batch asked again and charged again (never assumed free); run 4 does nothing new."""
    base = dict(dataset="digits", holders=4, teacher_steps=20, student_steps=20, curve_points=2, batch_size=2,
                workers=1, plaintext_check=True, output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                mechanism="lattice", teachers="cnn", student_seeds=1)

    r1 = reproduce(ReproduceConfig(queries=(4,), **base), progress=False)
    out = tmp_path / "out" / "digits"
    for name in ("report.md", "results.json", "accuracy_vs_queries.png", "epsilon_vs_tau.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "accuracy_vs_queries.png").read_bytes()[:4] == b"\x89PNG"
    assert r1["plaintext_check"]["he_vs_plaintext_noisy_argmax_agreement"] == 1.0
    assert r1["plaintext_check"]["noise_within_compiled_range"]
    assert r1["teachers"]["trained_now"] == 4 and r1["labelling"]["labelled_now"] == 4
    assert [row["tau"] for row in r1["table"]] == [1.0, 0.9, 0.7]
    for row in r1["table"]:
        assert row["epsilon_data_dependent"] <= row["epsilon_data_independent"] + 1e-9
        assert 0.0 <= row["student_supervised"] <= 1.0 and 0.0 <= row["student_semi-supervised"] <= 1.0
        assert 0.0 <= row["baseline_accuracy"] <= 1.0
        assert row["epsilon_publishable"] == row["epsilon_data_independent"]
        assert row["epsilon_data_dependent_publishable"] is False
    eps = [row["epsilon_data_independent"] for row in r1["table"]]
    assert eps[0] < eps[1] < eps[2]  # fewer secret shares, more ε
    report = (out / "report.md").read_text()
    assert "ε publishable" in report and "not publishable" in report and "non-private baseline" in report
    assert json.loads((out / "results.json").read_text())["table"][0]["queries"] == 4
    ledger_path = r1["privacy"]["ledger"]["path"]
    # the ledger's ε is never quoted without its δ_total
    assert re.search(r"running publishable ε = \S+ with δ_total (≥ 1 \(vacuous\)|= \S+) ", report)

    from speed.reproduce import store as store_mod

    def killed(*args, **kwargs):
        raise _Killed()

    monkeypatch.setattr(store_mod.LabelStore, "append", killed)
    with pytest.raises(_Killed):
        reproduce(ReproduceConfig(queries=(6,), **base), progress=False)
    monkeypatch.undo()
    with PrivacyLedger(ledger_path, read_only=True) as led:
        assert led.num_queries == 6  # the lost batch was charged before its labels could be released

    r3 = reproduce(ReproduceConfig(queries=(6, 4), **base), progress=False)
    lab = r3["labelling"]
    assert r3["teachers"]["trained_now"] == 0 and r3["teachers"]["loaded_from_checkpoints"] == 4
    assert lab["reused_from_store"] == 4 and lab["labelled_now"] == 2 and lab["charged_again_after_crash"] == 2
    assert r3["privacy"]["ledger"]["charged_queries"] == 8
    assert r3["plaintext_check"]["he_vs_plaintext_noisy_argmax_agreement"] == 1.0
    assert {row["queries"] for row in r3["table"]} == {4, 6}

    r4 = reproduce(ReproduceConfig(queries=(6,), **base), progress=False)
    assert r4["labelling"]["labelled_now"] == 0 and r4["labelling"]["compile_s"] is None
    assert r4["privacy"]["ledger"]["charged_queries"] == 8  # nothing charged twice
    np.testing.assert_equal(r4["accuracy_curve"][-1]["label_accuracy"], r3["accuracy_curve"][-1]["label_accuracy"])


@pytest.mark.slow
def test_reproduce_skellam_scattering_end_to_end_never_reuses_other_settings(tmp_path):
    """Skellam noise through real TFHE with scattering teachers (4 holders, 4 queries): HE labels equal
    the clear noisy argmax, the ledger charged the publishable ε the table reports, the results carry
    the publishable ε first. Other noise: teachers reused, labels and ledger not. Other teachers: new
    teachers and new labels. Same settings again: nothing new."""
    base = dict(dataset="digits", holders=4, queries=(4,), taus=(1.0,), teachers="scattering", teacher_steps=30,
                student_steps=20, curve_points=0, batch_size=2, methods=("linear", "linear-self-training"),
                student_seeds=2, plaintext_check=True, output=str(tmp_path / "out"),
                cache_dir=str(tmp_path / "cache"))
    r1 = reproduce(ReproduceConfig(sigma=2.0, **base), progress=False)
    chk = r1["plaintext_check"]
    assert chk["he_vs_plaintext_noisy_argmax_agreement"] == 1.0 and chk["noise_within_compiled_range"]
    assert r1["mechanism"] == {"mechanism": "skellam", "sigma": 2.0} and r1["tau"] == 1.0
    (row,) = r1["table"]
    assert list(row)[:8] == ["dataset", "holders", "queries", "tau", "epsilon_publishable", "delta_total", "delta",
                             "mechanism"]
    assert "epsilon_data_dependent" not in row and row["student_method"] == "linear-self-training"
    for k in ("label_accuracy", "student_accuracy", "student_accuracy_std", "baseline_accuracy"):
        assert 0.0 <= row[k] <= 1.0, k
    led = r1["privacy"]["ledger"]
    assert led["charged_queries"] == 4 and led["epsilon"] == pytest.approx(row["epsilon_publishable"], rel=1e-6)
    assert r1["epsilon_publishable"] == row["epsilon_publishable"] and r1["wall_seconds"] > 0
    assert r1["teachers"]["kind"] == "scattering" and r1["teachers"]["trained_now"] == 4
    with np.load(r1["teachers"]["votes_file"]) as z:
        assert z["pool_votes"].shape[0] == 4 and z["test_votes"].shape[0] == 4
    out = tmp_path / "out" / "digits"
    saved = json.loads((out / "results.json").read_text())
    assert saved["table"][0]["epsilon_publishable"] == row["epsilon_publishable"]
    report = (out / "report.md").read_text()
    assert "ε publishable" in report and "Skellam σ = 2" in report and "ε data-dep." not in report

    r2 = reproduce(ReproduceConfig(sigma=3.0, **base), progress=False)  # other noise
    assert r2["teachers"]["loaded_from_checkpoints"] == 4 and r2["teachers"]["trained_now"] == 0
    assert r2["labelling"]["labelled_now"] == 4 and r2["labelling"]["reused_from_store"] == 0
    assert r2["privacy"]["ledger"]["path"] != led["path"] and r2["privacy"]["ledger"]["charged_queries"] == 4

    r3 = reproduce(ReproduceConfig(sigma=2.0, **{**base, "teacher_steps": 40}), progress=False)  # other teachers
    assert r3["teachers"]["trained_now"] == 4 and r3["teachers"]["weights_digest"] != r1["teachers"]["weights_digest"]
    assert r3["labelling"]["labelled_now"] == 4 and r3["teachers"]["votes_file"] != r1["teachers"]["votes_file"]

    r4 = reproduce(ReproduceConfig(sigma=2.0, **base), progress=False)  # same settings: resumed, nothing new
    assert r4["labelling"]["labelled_now"] == 0 and r4["labelling"]["compile_s"] is None
    assert r4["teachers"]["trained_now"] == 0 and r4["privacy"]["ledger"]["charged_queries"] == 4
    assert r4["table"][0]["label_accuracy"] == row["label_accuracy"]
    assert r4["table"][0]["student_accuracy"] == row["student_accuracy"]
