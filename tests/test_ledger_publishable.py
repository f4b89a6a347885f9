"""The ledger charges the publishable (PLD) ε of the noise mechanism it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from speed.errors import BudgetExhaustedError, InputError, SpeedError
from speed.privacy.ledger import PrivacyLedger
from speed.privacy.mechanisms import Skellam
from speed.privacy.pld import epsilon_for_queries

SPEED = str(Path(sys.executable).with_name("speed"))


def test_charges_are_the_pld_epsilon_with_each_batch_tau(tmp_path):
    noise = Skellam(40.0)
    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger(path, noise=noise, tau=1.0, num_holders=10, expected_holders=10,
                       plan={"planned_queries": 20, "target_epsilon": 1.0}) as led:
        led.check_budget(num_queries=10)
        for q in range(10):
            led.record(q, failure_probability=1e-12)
        # a batch with 2 of 10 holders missing: τ_eff = 1 − 2/10
        led.check_budget(num_queries=5, num_holders=8)
        for q in range(10, 15):
            led.record(q, num_holders=8, failure_probability=1e-12)
        spent = led.epsilon()
    expected = epsilon_for_queries(noise, [1.0] * 10 + [0.8] * 5, 1e-5)
    assert spent["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert spent["epsilon"] > epsilon_for_queries(noise, [1.0] * 15, 1e-5)  # dropouts cost privacy
    assert spent["delta_total"] > 1e-5 and spent["num_queries"] == 15
    # reopened read-only: the same ε, from the file alone
    again = PrivacyLedger(path, read_only=True)
    assert again.epsilon()["epsilon"] == pytest.approx(expected, rel=1e-12)
    assert again.plan["planned_queries"] == 20


def test_budget_guard_uses_the_publishable_epsilon(tmp_path):
    noise = Skellam(40.0)
    limit = epsilon_for_queries(noise, [1.0] * 3, 1e-5) * 1.0001
    with PrivacyLedger(tmp_path / "l.jsonl", noise=noise, tau=1.0, max_epsilon=limit) as led:
        led.check_budget(num_queries=3)
        for q in range(3):
            led.record(q)
        with pytest.raises(BudgetExhaustedError, match="publishable ε"):
            led.check_budget(num_queries=1)
        with pytest.raises(BudgetExhaustedError):
            led.record(3)
        assert led.num_queries == 3


def test_other_mechanism_or_plan_is_refused(tmp_path):
    path = tmp_path / "l.jsonl"
    with PrivacyLedger(path, noise=Skellam(40.0), tau=1.0, plan={"planned_queries": 10}) as led:
        led.record(0)
    with pytest.raises(SpeedError, match="written under"):
        PrivacyLedger(path, noise=Skellam(41.0), tau=1.0)
    with pytest.raises(SpeedError, match="another plan"):
        PrivacyLedger(path, noise=Skellam(40.0), tau=1.0, plan={"planned_queries": 11})
    with pytest.raises(SpeedError, match="mixes|written under"):
        PrivacyLedger(path, gamma=3.3, tau=1.0, mechanism="lattice", resolution=1)
    with pytest.raises(InputError):
        PrivacyLedger(tmp_path / "x.jsonl", noise="skellam")


def test_cli_reads_a_skellam_ledger_publishable_first(tmp_path):
    path = tmp_path / "l.jsonl"
    with PrivacyLedger(path, noise=Skellam(40.0), tau=1.0, plan={"planned_queries": 5}) as led:
        led.check_budget(num_queries=5)
        for q in range(5):
            led.record(q)
    done = subprocess.run([SPEED, "privacy", "--ledger", str(path), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json

    info = json.loads(done.stdout)
    assert info["epsilon"] == pytest.approx(epsilon_for_queries(Skellam(40.0), [1.0] * 5, 1e-5), rel=1e-9)
    assert info["mechanism"]["mechanism"] == "skellam"
