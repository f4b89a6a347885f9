"""Exit statuses tell the truth, even after a concrete-python circuit ran in the process.

concrete's atexit hook ends the interpreter with status 0 (speed/exitstatus.py); these tests
run real subprocesses and read their statuses and output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SPEED = str(Path(sys.executable).with_name("speed"))

TINY_CIRCUIT = """
from concrete import fhe

def run_tiny_circuit():
    @fhe.compiler({"x": "encrypted"})
    def f(x):
        return x + 1
    circuit = f.compile(range(4))
    assert circuit.encrypt_run_decrypt(1) == 2
"""


def _run(args: list[str], cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_failing_concrete_test_fails_the_pytest_run(tmp_path):
    (tmp_path / "test_concrete_fails.py").write_text(
        TINY_CIRCUIT + "\n\ndef test_ran_a_circuit_then_failed():\n    run_tiny_circuit()\n    assert False\n"
    )
    (tmp_path / "test_concrete_passes.py").write_text(
        TINY_CIRCUIT + "\n\ndef test_ran_a_circuit():\n    run_tiny_circuit()\n"
    )
    failing = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "test_concrete_fails.py"], cwd=tmp_path)
    assert "1 failed" in failing.stdout, failing.stdout
    assert failing.returncode == 1, failing.stdout + failing.stderr
    passing = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "test_concrete_passes.py"], cwd=tmp_path)
    assert "1 passed" in passing.stdout, passing.stdout
    assert passing.returncode == 0, passing.stdout + passing.stderr


@pytest.mark.slow
@pytest.mark.parametrize("ending, status", [("sys.exit(3)", 3), ("raise RuntimeError('boom')", 1)])
def test_python_program_keeps_its_status_after_a_circuit(tmp_path, ending, status):
    script = tmp_path / "prog.py"
    script.write_text("import sys\nimport speed\n" + TINY_CIRCUIT + f"\nrun_tiny_circuit()\n{ending}\n")
    done = _run([sys.executable, str(script)])
    assert done.returncode == status, done.stderr


@pytest.mark.slow
def test_cli_keeps_status_2_after_a_circuit_ran(tmp_path):
    """A circuit runs in the process, then the CLI refuses bad input: the status stays 2."""
    script = tmp_path / "cli_after_circuit.py"
    script.write_text(TINY_CIRCUIT + textwrap.dedent("""
        import sys
        from speed.cli.main import main
        run_tiny_circuit()
        sys.exit(main(["privacy", "--gamma", "-1"]))
    """))
    done = _run([sys.executable, str(script)])
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "Warning" not in ln and "pkg_resources" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr


# The commands that issue 18 found exiting 0; each must exit 2 with one `error:` line.
REFUSED = [
    ["demo", "--max-epsilon", "0"],
    ["demo", "--holders", "5", "--queries", "10", "--max-epsilon", "1"],
    ["demo", "--ledger", "/tmp"],
    ["bench", "he", "--classes", "10", "--holders", "5", "--queries", "0"],
]


@pytest.mark.slow
@pytest.mark.parametrize("args", REFUSED, ids=[" ".join(a) for a in REFUSED])
def test_refused_commands_exit_2_with_one_error_line(tmp_path, args):
    done = _run([SPEED, *args, "--cache-dir", str(tmp_path / "cache")] if args[0] == "demo" else [SPEED, *args],
                cwd=tmp_path, timeout=900)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(errors) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
