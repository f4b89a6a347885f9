"""Bad input to any ``speed`` command: status 2, exactly one stderr line ``error: ...``, no traceback.

Every case runs the real entry point in a subprocess (``python -m speed.cli.main``) and must be
refused before any expensive work: no teacher is trained, no circuit compiled, no key made, no
Flower process started (issue 18 §4).  The cases run side by side once per module; each is a test
id of its own.  A case that got past the checks would train or compile and hit the timeout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from speed.cli import main as cli_main

# id: (argv with {placeholders}, fragment the one error line must contain)
CASES: dict[str, tuple[str, str]] = {
    # top level
    "no-command": ("", "COMMAND"),
    "unknown-command": ("bogus", "invalid choice"),
    # speed demo
    "demo-max-epsilon-0": ("demo --max-epsilon 0", "--max-epsilon"),
    "demo-max-epsilon-nan": ("demo --max-epsilon nan", "--max-epsilon"),
    "demo-gamma-nan": ("demo --gamma nan", "--gamma"),
    "demo-gamma-inf": ("demo --gamma inf", "--gamma"),
    "demo-gamma-0": ("demo --gamma 0", "γ"),
    "demo-resolution-0": ("demo --resolution 0", "--resolution"),
    "demo-batch-size-0": ("demo --batch-size 0", "--batch-size"),
    "demo-queries-not-int": ("demo --queries 1e3", "--queries"),
    "demo-queries-beyond-pool": ("demo --queries 99999999", "--queries 99999999 exceeds the public pool"),
    "demo-holders-1": ("demo --holders 1", "--holders"),
    "demo-holders-beyond-train": ("demo --holders 5000", "--holders 5000 exceeds"),
    "demo-tau-0": ("demo --tau 0", "--tau"),
    "demo-delta-1": ("demo --delta 1", "--delta"),
    "demo-seed-negative": ("demo --seed -1", "--seed"),
    "demo-pad-mode": ("demo --pad-mode nope", "--pad-mode"),
    "demo-student": ("demo --student nope", "--student"),
    "demo-ledger-dir": ("demo --ledger {dir}", "is a directory"),
    "demo-ledger-under-file": ("demo --ledger {file}/ledger.jsonl", "--ledger"),
    "demo-cache-dir-file": ("demo --cache-dir {file}", "--cache-dir"),
    "demo-ledger-corrupted": ("demo --ledger {bad_ledger}", "is corrupted at line 1"),
    "demo-budget-first-batch": ("demo --holders 5 --queries 10 --max-epsilon 1", "--max-epsilon 1: the first batch"),
    # speed privacy
    "privacy-no-gamma": ("privacy", "--gamma is required"),
    "privacy-gamma-1e308": ("privacy --gamma 1e308", "--gamma"),
    "privacy-gamma-1e9": ("privacy --gamma 1e9 --tau 0.9", "--gamma"),
    "privacy-gamma-negative": ("privacy --gamma -1", "--gamma"),
    "privacy-tau-1.5": ("privacy --gamma 3.3 --tau 1 1.5", "--tau"),
    "privacy-delta-0": ("privacy --gamma 3.3 --delta 0", "--delta"),
    "privacy-moments-0": ("privacy --gamma 3.3 --moments 0", "--moments"),
    "privacy-lattice-no-resolution": ("privacy --gamma 3.3 --mechanism lattice", "--resolution"),
    "privacy-resolution-huge": ("privacy --gamma 3.3 --mechanism lattice --resolution 1000000000000", "--resolution"),
    "privacy-resolution-gamma": ("privacy --gamma 3.3 --resolution 5", "--resolution"),
    "privacy-ledger-dir": ("privacy --ledger {dir}", "is a directory"),
    "privacy-ledger-missing": ("privacy --ledger {dir}/none.jsonl", "does not exist"),
    "privacy-counts-missing": ("privacy --counts /nonexistent.npy --gamma 3.3", "--counts"),
    "privacy-counts-not-npy": ("privacy --counts {file} --gamma 3.3", "cannot read"),
    "privacy-sigma-0": ("privacy --sigma 0 --queries 10", "--sigma"),
    "privacy-sigma-nan": ("privacy --sigma nan --queries 10", "--sigma"),
    "privacy-skellam-no-sigma": ("privacy --mechanism skellam --queries 10", "--sigma"),
    "privacy-skellam-no-queries": ("privacy --sigma 40", "--queries"),
    "privacy-queries-0": ("privacy --sigma 40 --queries 0", "--queries"),
    "privacy-unknown-mechanism": ("privacy --mechanism gauss --sigma 4 --queries 5", "--mechanism"),
    "privacy-sigma-with-lattice": ("privacy --mechanism lattice --sigma 4 --gamma 1 --queries 5", "--sigma"),
    "privacy-gamma-tau-below-1": ("privacy --mechanism gamma --gamma 3.3 --queries 5 --tau 0.9", "not supported"),
    "privacy-calibrate-no-target": ("privacy calibrate --queries 500", "--target-epsilon"),
    "privacy-calibrate-target-0": ("privacy calibrate --target-epsilon 0 --queries 500", "--target-epsilon"),
    "privacy-calibrate-target-inf": ("privacy calibrate --target-epsilon inf --queries 500", "--target-epsilon"),
    "privacy-calibrate-out-of-reach": ("privacy calibrate --target-epsilon 1e-5 --queries 500", "out of reach"),
    "privacy-calibrate-delta-1": ("privacy calibrate --target-epsilon 2 --queries 500 --delta 1", "--delta"),
    "privacy-calibrate-tau-0": ("privacy calibrate --target-epsilon 2 --queries 500 --tau 0", "--tau"),
    "privacy-calibrate-sigma-given": ("privacy calibrate --target-epsilon 2 --queries 5 --sigma 3", "--sigma"),
    "privacy-target-without-calibrate": ("privacy --target-epsilon 2 --queries 5 --sigma 3", "calibrate"),
    # speed bench he
    "bench-no-benchmark": ("bench", "BENCH"),
    "bench-queries-0": ("bench he --classes 10 --holders 5 --queries 0", "--queries"),
    "bench-queries-huge": ("bench he --queries 99999999", "--queries"),
    "bench-classes-1": ("bench he --classes 1", "--classes"),
    "bench-holders-0": ("bench he --holders 0", "--holders"),
    "bench-gamma-nan": ("bench he --gamma nan", "--gamma"),
    "bench-chunk-bits-0": ("bench he --chunk-bits 0", "--chunk-bits"),
    "bench-server-workers-0": ("bench he --server-workers 0", "--server-workers"),
    "bench-argmax": ("bench he --argmax nope", "--argmax"),
    # speed reproduce
    "reproduce-device-nonsense": ("reproduce --device nonsense", "--device"),
    "reproduce-queries-0": ("reproduce --queries 60 0", "--queries"),
    "reproduce-tau-0": ("reproduce --tau 1 0", "--tau"),
    "reproduce-gamma-inf": ("reproduce --gamma inf", "--gamma"),
    "reproduce-non-iid-0": ("reproduce --non-iid 0", "--non-iid"),
    "reproduce-curve-points-negative": ("reproduce --curve-points -1", "--curve-points"),
    "reproduce-threads-0": ("reproduce --threads 0", "--threads"),
    "reproduce-model": ("reproduce --model resnet", "--model"),
    "reproduce-output-file": ("reproduce --output {file}", "--output"),
    "reproduce-data-dir-missing": ("reproduce --dataset mnist --data-dir {dir}/none", "--data-dir"),
    "reproduce-mechanism": ("reproduce --mechanism gaussian", "--mechanism"),
    "reproduce-sigma-lattice": ("reproduce --mechanism lattice --sigma 3", "--sigma"),
    "reproduce-sigma-and-target": ("reproduce --sigma 3 --target-epsilon 4", "not both"),
    "reproduce-target-epsilon-0": ("reproduce --target-epsilon 0", "--target-epsilon"),
    "reproduce-teachers": ("reproduce --teachers resnet", "--teachers"),
    "reproduce-features-missing": ("reproduce --teachers scattering --features {dir}/none.npz", "--features"),
    "reproduce-features-corrupt": ("reproduce --teachers scattering --holders 3 --queries 2 --sigma 2 "
                                   "--features {file} --cache-dir {dir}/c --output {dir}/o", "feature cache"),
    "reproduce-linear-students-cnn": ("reproduce --teachers cnn --students linear", "--teachers scattering"),
    # speed deploy
    "deploy-no-action": ("deploy", "ACTION"),
    "deploy-simulate-table-missing": ("deploy simulate --task table --classes 10 --teacher-table /nonexistent.npy",
                                      "--teacher-table"),
    "deploy-simulate-cpus-0": ("deploy simulate --cpus-per-node 0", "--cpus-per-node"),
    "deploy-local-table-needed": ("deploy local --task table --classes 3 --holders 3", "--teacher-table"),
    "deploy-local-table-labels": ("deploy local --task table --classes 3 --holders 3 --teacher-table {table_k7}",
                                  "--classes 3 needs 0..2"),
    "deploy-local-table-shape": ("deploy local --task table --classes 10 --holders 4 --teacher-table {table_k7}",
                                 "has shape"),
    "deploy-local-table-not-npy": ("deploy local --task table --classes 3 --holders 3 --teacher-table {file}",
                                   "cannot read"),
    "deploy-local-queries-beyond-pool": ("deploy local --queries 99999", "--queries 99999 exceeds"),
    "deploy-local-kill-holder": ("deploy local --kill-holder 7", "--kill-holder"),
    "deploy-local-start-holders": ("deploy local --start-holders 0 9", "--start-holders"),
    "deploy-local-min-holders": ("deploy local --min-holders 9", "--min-holders"),
    "deploy-local-classes-1": ("deploy local --classes 1", "--classes"),
    "deploy-local-gamma-nan": ("deploy local --gamma nan", "--gamma"),
    "deploy-local-timeout-0": ("deploy local --timeout 0", "--timeout"),
    "deploy-local-vote-timeout-inf": ("deploy local --vote-timeout inf", "--vote-timeout"),
    "deploy-local-max-epsilon-negative": ("deploy local --max-epsilon -1", "--max-epsilon"),
    "deploy-local-job-id": ("deploy local --job-id ../x", "--job-id"),
    "deploy-local-mechanism": ("deploy local --mechanism gamma", "--mechanism"),
    "deploy-local-sigma-0": ("deploy local --sigma 0", "--sigma"),
    "deploy-local-sigma-nan": ("deploy local --sigma nan", "--sigma"),
    "deploy-local-sigma-lattice": ("deploy local --mechanism lattice --sigma 5", "--sigma applies to --mechanism skellam"),
    "deploy-local-sigma-and-target": ("deploy local --sigma 5 --target-epsilon 2", "not both"),
    "deploy-local-target-epsilon-inf": ("deploy local --target-epsilon inf", "--target-epsilon"),
    "deploy-simulate-target-epsilon-0": ("deploy simulate --target-epsilon 0", "--target-epsilon"),
    "deploy-simulate-sigma-lattice": ("deploy simulate --mechanism lattice --sigma 5", "--sigma applies"),
    "deploy-app-sigma-negative": ("deploy app {dir}/app --sigma -3", "--sigma"),
    "deploy-local-workdir-file": ("deploy local --workdir {file}", "--workdir"),
    "deploy-app-file": ("deploy app {file}", "directory"),
    "deploy-app-tau": ("deploy app {dir}/app --tau 2", "--tau"),
    "deploy-certs-days-0": ("deploy certs {dir}/certs --days 0", "--days"),
    "deploy-node-key-name": ("deploy node-key {dir}/keys ../evil", "name"),
    "deploy-pad-key-file": ("deploy pad-key --state-dir {file}", "--state-dir"),
}

#: Cases refused only after loading the dataset (pool size, training-set size, budget) or torch.
SLOW_CASES = {"demo-queries-beyond-pool", "demo-holders-beyond-train", "demo-budget-first-batch", "demo-ledger-corrupted",
              "deploy-local-queries-beyond-pool", "reproduce-device-nonsense", "reproduce-model",
              "reproduce-data-dir-missing"}

#: Subcommands every sweep must cover (checked against the parser below).
SUBCOMMANDS = ("demo", "privacy", "bench he", "reproduce", "deploy local", "deploy simulate", "deploy app",
               "deploy certs", "deploy node-key", "deploy pad-key")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case once, side by side, from an empty directory; id -> CompletedProcess."""
    base = tmp_path_factory.mktemp("cli-errors")
    work = base / "cwd"
    work.mkdir()
    (base / "dir").mkdir()
    (base / "file").write_text("not a .npy array\n")
    np.save(base / "table_k7.npy", np.full((20, 3), 7, dtype=np.int64))
    (base / "ledger.jsonl").write_text("not a ledger record\n")
    places = {"dir": base / "dir", "file": base / "file", "table_k7": base / "table_k7.npy",
              "bad_ledger": base / "ledger.jsonl"}
    env = {**os.environ, "SPEED_CACHE_DIR": str(base / "cache")}

    def run(case_id: str) -> subprocess.CompletedProcess:
        argv = CASES[case_id][0].format(**places).split()
        return subprocess.run([sys.executable, "-m", "speed.cli.main", *argv], cwd=work, env=env,
                              capture_output=True, text=True, timeout=240)

    # the cases that load a dataset or torch (seconds, not a fraction of one) first
    order = sorted(CASES, key=lambda c: c not in SLOW_CASES)
    with ThreadPoolExecutor(max_workers=4) as pool:
        out = dict(zip(order, pool.map(run, order)))
    out["_cwd"] = work
    return out


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_is_one_error_line_and_status_2(case_id, results):
    proc = results[case_id]
    fragment = CASES[case_id][1]
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert proc.returncode == 2, (proc.returncode, lines[0])


def test_no_work_was_done(results):
    """Nothing trained, compiled or started: the runs' working directory stays empty."""
    assert sorted(p.name for p in results["_cwd"].iterdir()) == []


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                nested = _subparsers(sub, full)
                out.update(nested or {full: sub})
    return out


def test_the_sweep_covers_every_subcommand():
    commands = _subparsers(cli_main.build_parser())
    assert sorted(commands) == sorted(SUBCOMMANDS)
    swept = {" ".join(argv.split()[:2]) if argv.split()[0] in ("bench", "deploy") else argv.split()[0]
             for argv, _ in CASES.values() if argv}
    assert set(SUBCOMMANDS) <= swept


def test_every_value_option_is_checked_while_parsing():
    """No option takes a bare int or float: each has a type from speed.cli.options."""
    for name, sub in _subparsers(cli_main.build_parser()).items():
        for action in sub._actions:
            assert action.type not in (int, float), f"speed {name} {action.option_strings}: unchecked {action.type}"


@pytest.mark.parametrize("exc, status, line", [
    (IsADirectoryError(21, "Is a directory", "/tmp"), 2, "error: Is a directory: /tmp"),
    (PermissionError(13, "Permission denied", "/root/x"), 2, "error: Permission denied: /root/x"),
    (OSError("disk\nfull"), 2, "error: disk full"),
    (MemoryError(), 1, "error: out of memory"),
])
def test_os_errors_become_one_line(monkeypatch, capsys, exc, status, line):
    import speed.cli.privacy_cmd as privacy_cmd

    def fail(args):
        raise exc

    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ("speed.cli.privacy_cmd",))
    monkeypatch.setattr(privacy_cmd, "run", fail)
    assert cli_main.main(["privacy", "--gamma", "3.3"]) == status
    assert capsys.readouterr().err.splitlines() == [line]


def test_pad_modes_match_the_crypto_layer():
    from speed.cli.options import PAD_MODES
    from speed.crypto.seeded import PAD_MODES as CRYPTO_PAD_MODES

    assert PAD_MODES == CRYPTO_PAD_MODES


@pytest.mark.parametrize("device, ok", [
    ("cpu", True), ("cuda", True), ("cuda:1", True), ("cuda:2", False), ("mps", False), ("meta", False),
    ("nonsense", False), ("cuda:x", False),
])
def test_torch_device_is_checked_against_the_devices_torch_sees(monkeypatch, device, ok):
    torch = pytest.importorskip("torch")
    from speed.cli.options import check_torch_device
    from speed.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    if ok:
        assert check_torch_device(device) == device
    else:
        with pytest.raises(InputError, match="--device"):
            check_torch_device(device)


def test_budget_projection_counts_what_the_ledger_holds(tmp_path):
    """speed demo refuses before training only when not even its first batch fits the budget."""
    from dataclasses import replace

    from speed.errors import BudgetExhaustedError
    from speed.pipeline import RunConfig, refuse_unanswerable
    from speed.privacy import PrivacyLedger

    path = tmp_path / "ledger.jsonl"
    with PrivacyLedger(path, run_id="earlier", gamma=0.5, tau=1.0, mechanism="lattice", resolution=1) as led:
        led.record(0)
        led.record(1)  # ε = 2 (2γ per query)
    config = RunConfig(holders=3, queries=4, batch_size=2, mechanism="lattice", gamma=0.5, max_epsilon=2.5, ledger=str(path))
    with pytest.raises(BudgetExhaustedError, match="from 2 to 4 .*already holds 2 queries"):
        refuse_unanswerable(config)
    refuse_unanswerable(replace(config, max_epsilon=4.0))  # the first batch fits (the second would not)
    refuse_unanswerable(replace(config, ledger=str(tmp_path / "new.jsonl")))  # a fresh ledger: 2 ≤ 2.5
    assert not (tmp_path / "new.jsonl").exists()  # nothing created by the check
    with pytest.raises(BudgetExhaustedError, match="first batch of 2 queries"):
        refuse_unanswerable(replace(config, ledger=None, max_epsilon=1.5))


def test_budget_projection_with_skellam_noise(tmp_path):
    """The same early refusal with the default Skellam noise: the projection is the publishable PLD ε,
    and a ledger of the paper's accounting or of another σ is refused before any work."""
    from dataclasses import replace

    from speed.errors import BudgetExhaustedError, InputError
    from speed.pipeline import RunConfig, noise_mechanism, refuse_unanswerable
    from speed.privacy import PrivacyLedger
    from speed.privacy.pld import publishable_epsilon

    config = RunConfig(holders=3, queries=4, batch_size=2, sigma=2.0)
    first = publishable_epsilon(noise_mechanism(config), 2, config.delta)
    refuse_unanswerable(replace(config, max_epsilon=first * 1.01))
    with pytest.raises(BudgetExhaustedError, match="publishable ε from 0 to"):
        refuse_unanswerable(replace(config, max_epsilon=first * 0.99))
    lattice = tmp_path / "lattice.jsonl"
    with PrivacyLedger(lattice, gamma=0.5, tau=1.0, mechanism="lattice", resolution=1) as led:
        led.record(0)
    with pytest.raises(InputError, match="paper's accounting"):
        refuse_unanswerable(replace(config, ledger=str(lattice)))
    other = tmp_path / "other.jsonl"
    with PrivacyLedger(other, tau=1.0, noise=noise_mechanism(replace(config, sigma=3.0))) as led:
        led.record(0)
    with pytest.raises(InputError, match="written under"):
        refuse_unanswerable(replace(config, ledger=str(other)))
