"""``speed privacy`` through the real entry point ``speed.cli.main.main``."""

from __future__ import annotations

import json
import math
import warnings
from contextlib import contextmanager

import numpy as np
import pytest

from speed.cli import main as cli_main


@contextmanager
def _ignore_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's IntegrationWarning at large γ
        yield


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
    # refused while parsing, naming the option (issue 18 §4)
    (["privacy", "--gamma", "1e308"], "--gamma"),
    (["privacy", "--gamma", "1e9", "--tau", "0.9"], "--gamma"),
    (["privacy", "--gamma", "nan"], "--gamma"),
    (["privacy", "--gamma", "inf"], "--gamma"),
    (["privacy", "--gamma", "3.3", "--tau", "nan"], "--tau"),
    (["privacy", "--gamma", "3.3", "--delta", "0"], "--delta"),
    (["privacy", "--gamma", "3.3", "--moments", "0"], "--moments"),
    (["privacy", "--gamma", "3.3", "--mechanism", "lattice", "--resolution", "0"], "--resolution"),
    (["privacy", "--gamma", "3.3", "--mechanism", "lattice", "--resolution", "1000000000000"], "--resolution"),
    (["privacy", "--ledger", "."], "is a directory"),
    (["privacy", "--counts", ".", "--gamma", "3.3"], "is a directory"),
    (["privacy", "--gamma", "3.3", "--mechanism", "nope"], "--mechanism"),
    (["privacy", "--gamma", "3.3", "--no-such-option"], "unrecognized"),
])
def test_bad_input_is_one_line_and_status_two(argv, fragment, capsys):
    assert cli_main.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


@pytest.mark.parametrize("mechanism", ["gamma", "lattice"])
def test_largest_gamma_gives_finite_epsilons(mechanism, capsys):
    """At the largest γ accepted, every ε printed is a number (never nan, 0 or inf)."""
    argv = ["privacy", "--gamma", "1e6", "--tau", "1", "0.9", "0.5", "--mechanism", mechanism, "--json"]
    if mechanism == "lattice":
        argv += ["--resolution", "1"]
    with _ignore_warnings():
        assert cli_main.main(argv) == 0
    for row in json.loads(capsys.readouterr().out):
        assert 1.99e6 <= row["per_query_epsilon"] < 2.1e6
        for key in ("eps1", "eps2", "histogram_epsilon"):
            value = row.get(key)
            assert value is None or 1.99e6 <= value < 2.1e6


def test_a_nan_from_the_accountant_is_refused_not_printed(monkeypatch, capsys):
    import speed.privacy as privacy

    monkeypatch.setattr(privacy, "per_query_epsilon_parts", lambda g, t: {"eps1": 0.0, "eps2": math.nan, "epsilon": 0.0})
    assert cli_main.main(["privacy", "--gamma", "3.3", "--tau", "0.9"]) == 2
    captured = capsys.readouterr()
    assert "nan" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ε₂ is not a finite number at γ = 3.3, τ = 0.9")
