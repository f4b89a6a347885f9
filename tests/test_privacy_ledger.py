"""The owner's durable privacy ledger: fsync before release, kill -9, torn lines, budget guard."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from speed.errors import BudgetExhaustedError, InputError, SpeedError
from speed.journal import JournalRepairWarning
from speed.privacy import PrivacyAccountant, PrivacyLedger, epsilon, per_query_epsilon


def _ledger(path, **kw):
    kw.setdefault("run_id", "run-a")
    kw.setdefault("gamma", 3.3)
    kw.setdefault("tau", 0.9)
    return PrivacyLedger(path, **kw)


def test_records_reopen_and_running_epsilon(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with _ledger(path, num_holders=250) as led:
        for i in range(30):
            rec = led.record(i)
        assert rec["per_query_epsilon"] == pytest.approx(per_query_epsilon(3.3, 0.9))
        spent = led.epsilon()
    want = epsilon(np.zeros((30, 10)), 3.3, 0.9, 1e-5)["data_independent"]
    assert spent["epsilon"] == pytest.approx(want, rel=1e-12)
    assert spent["publishable"] is True and spent["data_dependent"] is None
    with _ledger(path) as again:
        assert again.answered_query_ids() == set(range(30))
        assert again.answered_query_ids("other-run") == set()
        assert again.epsilon()["epsilon"] == pytest.approx(want, rel=1e-12)
        assert again.history == [["gamma", 3.3, 0.9, None, 30]]
    lines = path.read_text().splitlines()
    assert len(lines) == 30
    rec = json.loads(lines[0])
    for key in ("run_id", "query_id", "gamma", "tau", "num_holders", "mechanism", "resolution",
                "failure_probability", "time", "seq", "prev", "sha"):
        assert key in rec
    assert rec["seq"] == 0 and json.loads(lines[1])["prev"] == rec["sha"]
    head = json.loads(path.with_name("ledger.jsonl.head").read_text())
    assert head["count"] == 30 and head["last"] == json.loads(lines[-1])["sha"]


def test_resume_skips_answered_queries(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with _ledger(path) as led:
        for i in range(5):
            led.record(f"q{i}")
    with _ledger(path) as led:
        todo = [f"q{i}" for i in range(8) if f"q{i}" not in led.answered_query_ids()]
        assert todo == ["q5", "q6", "q7"]
        with pytest.raises(InputError, match="already answered"):
            led.record("q3")
        for q in todo:
            led.record(q)
        assert led.num_queries == 8


def test_budget_guard_raises_before_writing(tmp_path):
    path = tmp_path / "ledger.jsonl"
    eps_q = per_query_epsilon(3.3, 1.0)
    with _ledger(path, tau=1.0, max_epsilon=3 * eps_q + 1e-9) as led:
        for i in range(3):
            led.record(i)
        size = path.stat().st_size
        with pytest.raises(BudgetExhaustedError) as info:
            led.record(3)
        msg = str(info.value)
        assert "query 3" in msg and "19.8000" in msg and "26.4000" in msg and "max" in msg
        assert path.stat().st_size == size and led.num_queries == 3
        with pytest.raises(BudgetExhaustedError):
            led.check_budget()
        # an explicit, larger budget lets the next query through
        assert led.check_budget(100.0) == pytest.approx(4 * eps_q)
        led.record(3, max_epsilon=100.0)
        assert led.num_queries == 4


def test_kill_minus_nine_keeps_every_acknowledged_record(tmp_path):
    path = tmp_path / "ledger.jsonl"
    src = Path(__file__).resolve().parents[1] / "src"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(src)!r})
        from speed.privacy import PrivacyLedger
        led = PrivacyLedger({str(path)!r}, run_id="crash", gamma=3.3, tau=0.7)
        i = 0
        while True:
            led.record(i, num_holders=250)
            print(i, flush=True)   # the "label release": only after fsync
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= 40:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    # simulate a write torn by the kill: a fragment of a record without its newline
    with open(path, "ab") as f:
        f.write(b'{"crc":123,"gamma":3.3,"query_id":99')
    with pytest.warns(JournalRepairWarning, match="repaired: .*torn write"), \
            PrivacyLedger(path, run_id="crash", gamma=3.3, tau=0.7) as led:
        ids = led.answered_query_ids()
        assert set(acked) <= ids  # every released label was charged
        assert ids == set(range(len(ids)))  # and nothing else (no holes)
        assert led.repaired_bytes > 0
        assert led.epsilon()["num_queries"] == len(ids)
        led.record(len(ids))  # appending works after the repair
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(x) for x in lines[:-1])


def test_corruption_in_the_middle_is_refused(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with _ledger(path) as led:
        for i in range(3):
            led.record(i)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"gamma":3.3', '"gamma":9.9')
    path.write_text("".join(lines))
    with pytest.raises(SpeedError, match="checksum"):
        _ledger(path)
    lines[1] = "not json\n"
    path.write_text("".join(lines))
    with pytest.raises(SpeedError, match="corrupted at line 2"):
        _ledger(path)


def test_second_writer_is_locked_out(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with _ledger(path) as led:
        led.record(0)
        with pytest.raises(SpeedError, match="in use"):
            _ledger(path)
        ro = PrivacyLedger(path, read_only=True)
        assert ro.num_queries == 1
        with pytest.raises(SpeedError, match="read-only"):
            ro.record(1)


def test_data_dependent_only_with_counts_and_labelled(tmp_path):
    rng = np.random.default_rng(9)
    counts = rng.multinomial(250, [0.7, 0.2, 0.1], size=20)
    with _ledger(tmp_path / "sim.jsonl", mechanism="lattice", resolution=100) as led:
        for i, row in enumerate(counts):
            led.record(i, counts=row)
        spent = led.epsilon()
    want = epsilon(counts, 3.3, 0.9, 1e-5, mechanism="lattice", resolution=100)
    assert spent["data_dependent"] == pytest.approx(want["data_dependent"], rel=1e-9)
    assert spent["epsilon"] == pytest.approx(want["data_independent"], rel=1e-12)
    assert "not publishable" in spent["data_dependent_note"]
    with _ledger(tmp_path / "mixed.jsonl") as led:
        led.record(0, counts=[200, 50, 0])
        led.record(1)  # deployment-style record: no counts → no data-dependent ε
        assert led.epsilon()["data_dependent"] is None


def test_dropouts_reduce_effective_tau(tmp_path):
    with _ledger(tmp_path / "l.jsonl", tau=0.9, expected_holders=250) as led:
        rec = led.record(0, num_holders=240)
        assert rec["tau_effective"] == pytest.approx(0.9 - 10 / 250)
        assert rec["per_query_epsilon"] == pytest.approx(per_query_epsilon(3.3, 0.86))
        with pytest.raises(InputError, match="no secret noise"):
            led.record(1, num_holders=20)


def test_failure_probability_folded_into_delta(tmp_path):
    # τ < 1: ε_q needs the exact argmax, so B = Σβ goes into δ as (1 + e^ε) B
    with _ledger(tmp_path / "l.jsonl", gamma=0.05, tau=0.9) as led:
        for i in range(10):
            led.record(i, failure_probability=1e-12)
        spent = led.epsilon()
    assert spent["failure_probability"] == pytest.approx(1e-11)
    assert spent["delta_total"] == pytest.approx(1e-5 + (1 + math.exp(spent["epsilon"])) * 1e-11)
    # τ = 1: 2γ is a histogram bound, the circuit's output is post-processing: δ unchanged,
    # β enlarges q instead
    counts = [[240, 10, 0]] * 10
    with _ledger(tmp_path / "h.jsonl", gamma=0.05, tau=1.0) as led:
        for i in range(10):
            led.record(i, failure_probability=1e-3, counts=counts[i])
        spent = led.epsilon()
    assert spent["delta_total"] == 1e-5 and spent["failure_probability_folded"] == 0.0
    want = epsilon(counts, 0.05, 1.0, 1e-5, failure_probability=1e-3)
    assert spent["data_dependent"] == pytest.approx(want["data_dependent"], rel=1e-12)
    assert want["data_dependent"] > epsilon(counts, 0.05, 1.0, 1e-5)["data_dependent"]
    assert want["delta_total_data_dependent"] == 1e-5


def test_state_dict_round_trip(tmp_path):
    acc = PrivacyAccountant()
    acc.step(gamma=3.3, tau=0.9, num_queries=5)
    acc.step(gamma=3.3, tau=0.9)
    acc.step(gamma=3.3, tau=0.7, mechanism="lattice", resolution=100, failure_probability=1e-20)
    state = json.loads(json.dumps(acc.state_dict()))
    assert state["history"] == [["gamma", 3.3, 0.9, None, 6], ["lattice", 3.3, 0.7, 100, 1]]
    other = PrivacyAccountant()
    other.load_state_dict(state)
    assert other.get_epsilon(1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-13)
    assert other.failure_probability == acc.failure_probability
    with _ledger(tmp_path / "l.jsonl") as led:
        led.record(0)
        led.load_state_dict(json.loads(json.dumps(led.state_dict())))  # agrees: no error
        with pytest.raises(SpeedError, match="disagrees"):
            led.load_state_dict(state)


def test_ledger_guards(tmp_path):
    with pytest.raises(ValueError, match="delta"):
        PrivacyLedger(tmp_path / "a.jsonl", delta=0)
    with _ledger(tmp_path / "b.jsonl") as led:
        with pytest.raises(ValueError, match="tau"):
            led.record(0, tau=1.5)
        with pytest.raises(InputError, match="failure_probability"):
            led.record(0, failure_probability=2.0)
        with pytest.raises(InputError, match="query_id"):
            led.record(1.5)
        assert led.num_queries == 0
    with pytest.raises(FileNotFoundError):
        PrivacyLedger(tmp_path / "missing.jsonl", read_only=True)


# ------------------------------------------------------------------ tamper evidence (issue 18 §2)
def _filled(path, n, **kw):
    with _ledger(path, tau=1.0, **kw) as led:
        for i in range(n):
            led.record(i)
        return led.epsilon()["epsilon"]


def test_ledger_cut_in_half_is_refused_not_understated(tmp_path):
    path = tmp_path / "ledger.jsonl"
    eps = _filled(path, 34)
    assert eps == pytest.approx(34 * per_query_epsilon(3.3, 1.0))  # 224.4
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for ro in (False, True):
        with pytest.raises(SpeedError, match=r"privacy ledger .*ledger.jsonl: head records 34 entries, file holds "
                                             r"1[67]: records were lost; refusing to under-state ε"):
            _ledger(path, read_only=ro)
    assert path.read_bytes() == data[: len(data) // 2]


def test_ledger_deleted_line_is_refused(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _filled(path, 10)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:4] + lines[5:]))  # sed 5d
    with pytest.raises(SpeedError, match="line 5 holds record seq 5 where seq 4 was expected: records were lost"):
        _ledger(path)
    path.write_bytes(b"".join(lines[:-1]))  # sed '$d'
    with pytest.raises(SpeedError, match="head records 10 entries, file holds 9"):
        _ledger(path)


def test_ledger_unterminated_valid_record_is_kept_with_a_warning(tmp_path):
    path = tmp_path / "ledger.jsonl"
    eps = _filled(path, 5)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.warns(JournalRepairWarning, match=r"repaired: privacy ledger .*kept record seq 4.*newline added"), \
            _ledger(path) as led:
        assert led.num_queries == 5 and led.epsilon()["epsilon"] == pytest.approx(eps)
    assert path.read_bytes() == data


def test_ledger_without_head_is_refused(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _filled(path, 3)
    path.with_name("ledger.jsonl.head").unlink()
    with pytest.raises(SpeedError, match="head file ledger.jsonl.head is missing.*refusing to under-state ε"):
        _ledger(path)


def test_legacy_v1_ledger_is_upgraded_once_with_a_warning(tmp_path):
    import zlib

    path = tmp_path / "ledger.jsonl"
    with _ledger(tmp_path / "new.jsonl", tau=1.0) as led:
        recs = [led.record(i) for i in range(3)]
    lines = []
    for rec in recs:  # the version-1 format: sorted keys + CRC-32
        body = json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        lines.append(json.dumps({**rec, "crc": zlib.crc32(body.encode())}, sort_keys=True, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")
    bad = lines[1].replace('"tau":1.0', '"tau":0.5')
    path.write_text("\n".join([lines[0], bad, lines[2]]) + "\n")
    with pytest.raises(SpeedError, match="checksum mismatch at line 2"):
        _ledger(path)
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(JournalRepairWarning, match="upgraded from the legacy format .* 3 records"), \
            _ledger(path, tau=1.0) as led:
        assert led.num_queries == 3
        led.record(3)
    with _ledger(path, read_only=True) as led:
        assert led.num_queries == 4
    assert json.loads(path.read_text().splitlines()[0])["seq"] == 0


def _speed_cli(*argv):
    exe = Path(sys.executable).with_name("speed")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "speed.cli.main"]
    return subprocess.run(cmd + list(argv), capture_output=True, text=True, timeout=120)


def test_cli_refuses_a_damaged_ledger_in_one_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _filled(path, 34)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    proc = _speed_cli("privacy", "--ledger", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: privacy ledger ")
    assert "head records 34 entries, file holds" in proc.stderr and "refusing to under-state ε" in proc.stderr
    proc = _speed_cli("privacy", "--ledger", str(tmp_path))  # a directory
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:")
    assert "is a directory" in proc.stderr
    # the directory reaches the ledger itself (not only the CLI's argument check): one line too
    with pytest.raises(SpeedError, match="is a directory, not a file"):
        PrivacyLedger(tmp_path, read_only=True)


# ------------------------------------------------------------------ label store
def _store(path, key="k"):
    from speed.reproduce.store import LabelStore

    return LabelStore(path, key, {})


def _batch(store, b, positions, labels):
    n = len(positions)
    store.append(b, np.array(positions), np.array(labels), np.array(labels), np.zeros((n, 3)), {"wall_s": 1.0}, {})


def test_label_store_edited_label_is_refused(tmp_path):
    path = tmp_path / "labels.jsonl"
    store = _store(path)
    _batch(store, 0, [5, 7], [1, 2])
    _batch(store, 1, [9], [0])
    store.close()
    assert _store(path).label_of == {5: 1, 7: 2, 9: 0}
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"labels":[1,2]', '"labels":[1,3]')
    path.write_text("".join(lines))
    with pytest.raises(SpeedError, match=r"labelling store .*labels.jsonl: checksum mismatch at line 2"):
        _store(path)
    path.write_text("".join(lines[:1] + lines[2:]))  # a batch deleted
    with pytest.raises(SpeedError, match="line 2 holds record seq 2 where seq 1 was expected"):
        _store(path)


def test_resume_refuses_a_label_without_a_ledger_charge(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import speed.pipeline
    from speed.reproduce import run as run_mod

    state = tmp_path / "state"
    store = _store(state / "labels.jsonl", key="key-1")
    _batch(store, 0, [5, 7, 9], [1, 2, 0])
    store.close()
    cfg = SimpleNamespace(state_key=lambda: "key-1", gamma=0.3)
    spec = SimpleNamespace(to_dict=lambda: {})
    monkeypatch.setattr(speed.pipeline, "failure_probability_per_query", lambda spec, scale: 0.0)

    def resume():
        run_mod._encrypted_labelling(cfg, spec, None, [], np.array([5, 7, 9]), np.zeros((3, 3)), state, False,
                                     lambda *a: None)

    with pytest.raises(SpeedError, match=r"holds 3 labels but privacy ledger .*ledger.jsonl does not exist"):
        resume()
    with PrivacyLedger(state / "ledger.jsonl", run_id="key-1", gamma=3.3, tau=1.0) as led:
        led.record(5)
        led.record("7/retry1")  # charged again after a crash: counts
    with pytest.raises(SpeedError, match=r"labelling store .* holds 1 labels with no charge in privacy ledger "
                                         r".*ledger.jsonl \(positions 9\).*refusing to resume"):
        resume()
    with PrivacyLedger(state / "ledger.jsonl", run_id="other-run", gamma=3.3, tau=1.0) as led:
        led.record(9)  # another run's charge does not pay for this run's label
    with pytest.raises(SpeedError, match=r"positions 9\)"):
        resume()
    from speed.reproduce.store import LabelStore

    LabelStore(state / "labels.jsonl", "key-1", {}).charged_check({5, "7/retry1", 9}, "ledger")  # all charged
