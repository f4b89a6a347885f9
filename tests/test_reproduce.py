"""``speed reproduce``: report files, resume (teachers, labels, ledger), plaintext check, CLI errors."""

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
    assert ReproduceConfig(dataset="svhn").resolved().queries == (500,)
    assert ReproduceConfig(dataset="svhn").resolved().include_extra is True
    d = ReproduceConfig().resolved()
    assert d.dataset == "digits" and 20 <= d.holders <= 50


def test_curve_is_prefixes_of_the_largest_q():
    cfg = ReproduceConfig(queries=(60, 30), curve_points=4).resolved()
    assert curve_queries(cfg) == [8, 15, 30, 60]
    assert curve_queries(ReproduceConfig(queries=(6,), curve_points=0).resolved()) == [6]


def test_state_key_ignores_accounting_only_settings():
    a = ReproduceConfig(queries=(10,), taus=(1.0,)).resolved()
    b = ReproduceConfig(queries=(60, 30), taus=(0.7,), plaintext_check=True).resolved()
    assert a.state_key() == b.state_key()  # labels do not depend on Q (prefix-stable) nor on τ
    assert a.state_key() != ReproduceConfig(gamma=2.0).resolved().state_key()
    assert a.state_key() != ReproduceConfig(teacher_steps=10).resolved().state_key()
    assert a.state_key() != ReproduceConfig(model="mlp").resolved().state_key()  # other teachers, other labels


def test_teacher_recipe_is_part_of_the_state(monkeypatch):
    from speed.learning import train

    a = ReproduceConfig(dataset="fashion-mnist").resolved()
    key = a.state_key()
    monkeypatch.setitem(train.TEACHER_CONFIG, "fashion-mnist",
                        train.TrainConfig(steps=600, batch_size=64, lr=0.08, optimizer="sgd"))
    assert a.state_key() != key  # a new default recipe never reuses labels of the old teachers


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
                workers=1, plaintext_check=True, output=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))

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
        assert 0.0 <= row["non_private_baseline"] <= 1.0
    eps = [row["epsilon_data_independent"] for row in r1["table"]]
    assert eps[0] < eps[1] < eps[2]  # fewer secret shares, more ε
    report = (out / "report.md").read_text()
    assert "ε data-indep. (publishable)" in report and "non-private baseline" in report
    assert json.loads((out / "results.json").read_text())["table"][0]["queries"] == 4
    ledger_path = r1["privacy"]["ledger"]["path"]
    # the ledger's ε is never quoted without its δ_total
    assert re.search(r"running data-independent ε = \S+ with δ_total (≥ 1 \(vacuous\)|= \S+) ", report)

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
