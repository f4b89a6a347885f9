"""The demo end to end (real encryption, tiny sizes) and the CLI's behaviour on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from speed.cli.main import main


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "privacy" in out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "--holders" in capsys.readouterr().out


def test_bad_input_is_one_line(capsys, tmp_path):
    code = main(["demo", "--holders", "1", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1 and "holders" in err


@pytest.mark.slow
@pytest.mark.parametrize("noise", [["--target-epsilon", "20"], ["--mechanism", "lattice", "--gamma", "0.5"]],
                         ids=["skellam-target", "lattice-paper"])
def test_demo_json_end_to_end(tmp_path, noise, capsys):
    """3 holders, 4 queries through real TFHE; HE labels must equal the clear noisy argmax, and the
    publishable ε comes first, as charged by the ledger."""
    cmd = [
        sys.executable, "-m", "speed.cli.main", "demo", "--json", "--holders", "3", "--queries", "4",
        "--batch-size", "4", *noise, "--cache-dir", str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["accuracy"]["he_vs_plaintext_noisy_argmax_agreement"] == 1.0
    assert 0.0 <= result["accuracy"]["student_test"] <= 1.0
    p = result["privacy"]
    assert list(p)[0] == "epsilon_publishable"
    assert p["delta_total"] >= p["delta"]
    if noise[0] == "--target-epsilon":
        from speed.privacy.ledger import PrivacyLedger

        assert result["settings"]["noise"]["mechanism"] == "skellam"
        assert 19.0 < p["epsilon_publishable"] <= 20.0  # calibrated to the plan of 4 queries
        assert p["epsilon_data_dependent"] is None
        again = PrivacyLedger(p["ledger"], read_only=True).epsilon()
        assert again["epsilon"] == pytest.approx(p["epsilon_publishable"], rel=1e-12)
        assert again["plan"]["planned_queries"] == 4 and again["plan"]["target_epsilon"] == 20.0
    else:
        assert p["epsilon_publishable"] == p["epsilon_data_independent"]
        assert p["epsilon_data_dependent"] <= p["epsilon_data_independent"] + 1e-9
        assert p["delta_total_data_dependent"] >= p["delta"] and p["histogram_failure_per_query"] > 0
    assert result["bytes"]["holder_to_server_bytes_per_query"] > 0
    assert result["circuit"]["pbs_per_call"] > 0
    from speed.cli.demo_cmd import print_result

    print_result(result)  # the table: the publishable ε before any accuracy
    table = capsys.readouterr().out
    assert table.index("ε publishable") < table.index("HE labels vs true labels") < table.index("server s / query")


def test_range_check_option_reaches_the_circuit():
    """`speed demo --range-check classes` compiles the encrypted range check (tests/test_integrity.py runs it)."""
    from speed.pipeline import RunConfig, circuit_spec

    config = RunConfig(holders=3, queries=4, batch_size=2, sigma=2.0, range_check="classes")
    spec = circuit_spec(config, 3)
    assert spec.range_check == "classes" and spec.range_check_bootstraps > 0
    assert circuit_spec(RunConfig(holders=3, queries=4, batch_size=2, sigma=2.0), 3).range_check == "off"


def test_range_check_bad_value_is_one_line(capsys, tmp_path):
    assert main(["demo", "--range-check", "maybe", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "--range-check" in err
