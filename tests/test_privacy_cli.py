"""``speed privacy`` through the real entry point ``speed.cli.main.main``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speed.cli import main as cli_main


@pytest.fixture(autouse=True)
def _only_privacy_command(monkeypatch):
    # other subcommands import heavy stacks (torch, concrete): not needed here
    assert "speed.cli.privacy_cmd" in cli_main.COMMAND_MODULES
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("speed.cli.privacy_cmd",))


def test_per_query_table_for_several_taus(capsys):
    assert cli_main.main(["privacy", "--gamma", "3.3", "--tau", "1", "0.9", "0.7"]) == 0
    out = capsys.readouterr().out
    for value in ("6.6000", "7.2253", "7.9427"):
        assert value in out


def test_per_query_json_lattice(capsys):
    argv = ["privacy", "--gamma", "3.3", "--tau", "0.7", "--mechanism", "lattice",
            "--resolution", "100", "--json"]
    assert cli_main.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["per_query_epsilon"] <= data[0]["histogram_epsilon"]


def test_counts_table_and_json(tmp_path, capsys):
    counts = np.random.default_rng(0).multinomial(250, [0.6, 0.3, 0.1], size=100)
    path = tmp_path / "votes.npy"
    np.save(path, counts)
    assert cli_main.main(["privacy", "--counts", str(path), "--gamma", "3.3", "--tau", "0.9",
                          "--delta", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert "data-independent" in out and "publishable" in out and "NOT publishable" in out
    assert cli_main.main(["privacy", "--counts", str(path), "--gamma", "3.3", "--tau", "1", "0.9",
                          "--delta", "1e-5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["tau"] for d in data] == [1.0, 0.9]
    assert data[1]["per_query_epsilon"] == pytest.approx(7.2253, abs=5e-5)
    assert data[0]["publishable"] == "data_independent"


def test_ledger_summary(tmp_path, capsys):
    from speed.privacy import PrivacyLedger

    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger(path, run_id="r", gamma=3.3, tau=1.0) as led:
        led.record(0)
        led.record(1)
    assert cli_main.main(["privacy", "--ledger", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["num_queries"] == 2 and data["epsilon"] == pytest.approx(13.2)


@pytest.mark.parametrize("argv, fragment", [
    (["privacy", "--gamma", "3.3", "--tau", "1.5"], "tau"),
    (["privacy", "--gamma", "-1"], "gamma"),
    (["privacy", "--counts", "missing.npy", "--gamma", "3.3"], "does not exist"),
    (["privacy", "--gamma", "3.3", "--mechanism", "lattice"], "resolution"),
])
def test_bad_input_is_one_line_and_status_two(argv, fragment, capsys):
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]
