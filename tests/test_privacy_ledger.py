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
