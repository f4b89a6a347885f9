"""What ``speed deploy local`` and ``speed deploy simulate`` share: one launcher around ``flwr run --stream``.

* :func:`launch` — the run directory (``<workdir>/runs/<stamp>``), the environment of every
  process (``FLWR_HOME`` of the run, no telemetry), a :class:`speed.deploy.processes.ProcessSet`,
  Ctrl-C / SIGTERM / SIGHUP / errors / exit all ending with every process stopped, and the JSON
  summary of the job (:func:`job_report`, also written to ``<run dir>/summary.json``);
* :func:`stream_job` — submits the Flower App with ``flwr run --stream``, relays the ServerApp's
  ``[speed]`` progress lines as they come (and to ``logs/flwr-run.log``), kills ``flwr run`` at
  the timeout, and reads the job summary from the JSON file the ServerApp writes
  (run-config key ``summary-file``, :data:`speed.deploy.config.SUMMARY_FILE`): nothing is
  parsed out of the log stream;
* small helpers: executables next to the interpreter, free loopback ports, waiting for a port,
  the ``flwr`` connection file, pinning holders' pad keys, resolving the noise mechanism once.

What differs stays in :mod:`speed.deploy.local` (one ``flower-supernode`` per party, SuperNode
authentication, fault injection) and :mod:`speed.deploy.simulation` (``flower-superlink
--simulation``, ray, memory sampling).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from speed.deploy.config import SUMMARY_FILE, DeployConfig, write_app_dir
from speed.deploy.processes import ProcessSet, signals_interrupt
from speed.deploy.sealing import HolderPadKey
from speed.errors import SpeedError
from speed.fsutil import atomic_write_text

__all__ = ["Session", "job_report", "launch", "resolve_noise", "stream_job"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PREFIX = "[speed]"


def bin_path(name: str) -> str:
    """A console script of this environment (``flower-superlink``, ``flwr``...), else from PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SpeedError(f"{name} not found (install flwr==1.42 in this environment)")
    return found


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SpeedError(f"{what} exited with status {proc.returncode} at start; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SpeedError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s; see {log}")


def resolve_noise(config: DeployConfig, say: Callable[[str], None]) -> DeployConfig:
    """The config with its noise mechanism resolved (calibrated once, here): its dict travels in the
    run config, so that no ClientApp process calibrates again and every party uses the same noise."""
    if not config.noise and config.planned_target_epsilon is not None:
        say(f"{PREFIX} calibrating the {config.mechanism} noise to publishable ε ≤ {config.planned_target_epsilon:g} "
            f"for {config.queries} queries (δ = {config.delta:g}, τ = {config.tau:g})")
    config = config.resolved()
    say(f"{PREFIX} noise: {config.noise}")
    return config


@dataclass
class Session:
    """One launch: where its files go, its processes, and what to run when it ends."""

    config: DeployConfig
    workdir: Path
    cache_dir: Path
    run_dir: Path
    flwr_home: Path
    procs: ProcessSet
    say: Callable[[str], None]
    on_stop: list[Callable[[], None]] = field(default_factory=list)  # before the processes are stopped
    after_stop: list[Callable[[], None]] = field(default_factory=list)  # after
    report: dict[str, Any] = field(default_factory=dict)  # merged into the JSON summary

    @property
    def summary_path(self) -> Path:
        return self.run_dir / "job-summary.json"

    def connect(self, connection: str, port: int, ca_cert: Path) -> None:
        """``flwr``'s connection ``connection`` to the SuperLink on 127.0.0.1:``port`` (TLS, our CA)."""
        atomic_write_text(
            self.flwr_home / "config.toml",
            f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\n'
            f'address = "127.0.0.1:{port}"\nroot-certificates = "{ca_cert}"\n'
        )

    def write_app(self, extra: dict[str, str] | None = None) -> Path:
        """The Flower App of this job; its run config tells the ServerApp where to write the job summary."""
        return write_app_dir(self.run_dir / "app", self.config, extra={**(extra or {}),
                                                                      SUMMARY_FILE: str(self.summary_path)})

    def pin_holder_keys(self, pins: Path) -> Path:
        """The holders' pad public keys, pinned for the owner (out of band in a real federation)."""
        pins.mkdir(parents=True, exist_ok=True)
        for stale in pins.glob("holder-*.pub"):
            stale.unlink()
        for i in range(self.config.holders):
            atomic_write_text(pins / f"holder-{i}.pub", HolderPadKey(self.workdir / f"holder-{i}").public_hex() + "\n")
        return pins


def launch(config: DeployConfig, workdir: Path, cache_dir: Path, tag: str, say: Callable[[str], None],
           body: Callable[[Session], dict[str, Any]], *, env: dict[str, str] | None = None,
           node_auth: bool = True) -> dict[str, Any]:
    """Run ``body(session)`` (which starts the processes and returns :func:`stream_job`'s summary) with
    every process stopped afterwards, whatever happens; return the job's JSON summary."""
    started_at = time.perf_counter()
    config = resolve_noise(config, say)
    workdir = Path(workdir).expanduser().resolve()
    cache_dir = Path(cache_dir).expanduser().resolve()
    run_dir = workdir / "runs" / (time.strftime("%Y%m%dT%H%M%S") + f"{tag}-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / "flwr-home"
    flwr_home.mkdir()
    full_env = dict(os.environ)
    full_env.update({
        "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}",
        "PYTHONWARNINGS": "ignore:pkg_resources is deprecated:UserWarning",
        **(env or {}),
    })
    procs = ProcessSet(run_dir / "logs", full_env)
    session = Session(config, workdir, cache_dir, run_dir, flwr_home, procs, say)
    stop_report: dict[str, Any] = {}

    def stop(*_: Any) -> None:
        stop_report.update(procs.stop_all(), token=procs.token)

    atexit.register(stop)
    summary: dict[str, Any] | None = None
    status, reason = "failed", None
    try:
        with signals_interrupt():  # Ctrl-C, SIGTERM and SIGHUP all end in the `finally` below
            try:
                summary = body(session)
                status, reason = summary.get("status", "failed"), summary.get("reason")
            except KeyboardInterrupt as exc:
                status, reason = "interrupted", f"interrupted ({exc or 'Ctrl-C'}): every process is being stopped"
                say(f"{PREFIX} {reason}")
            except SpeedError as exc:
                status, reason = "failed", str(exc)
            finally:
                for fn in session.on_stop:
                    fn()
                stop()
    finally:
        atexit.unregister(stop)
        for fn in session.after_stop:
            fn()
    result = job_report(config, workdir, run_dir, summary or {}, status, reason, stop_report,
                        time.perf_counter() - started_at, node_auth=node_auth)
    result.update(session.report)
    atomic_write_text(run_dir / "summary.json", json.dumps(result, indent=2, sort_keys=True))
    return result


def stream_job(session: Session, argv: list[str], timeout: float,
               on_line: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Run ``flwr run ... --stream`` (``argv``), relay its ``[speed]`` lines to ``session.say`` (and
    ``on_line``), and return the job summary the ServerApp wrote to ``session.summary_path``.

    Returns ``{"status": "timeout", ...}`` when ``timeout`` passed first (``flwr run`` is killed),
    and None when the stream ended without a summary file (the caller says why).
    """
    procs = session.procs
    flwr = procs.start("flwr-run", argv, capture=True, cwd=str(session.run_dir))
    deadline = time.monotonic() + timeout
    timer = threading.Timer(timeout, lambda: procs.kill("flwr-run"))
    timer.daemon = True
    timer.start()
    try:
        with open(procs.log_dir / "flwr-run.log", "a") as log:
            assert flwr.stdout is not None
            for raw in flwr.stdout:
                line = ANSI.sub("", raw.decode(errors="replace")).rstrip()
                log.write(line + "\n")
                log.flush()
                if PREFIX in line:
                    line = line[line.index(PREFIX):]
                    if not line.startswith(f"{PREFIX} SUMMARY "):  # the operator's copy; ours is the file
                        session.say(line)
                        if on_line is not None:
                            on_line(line)
                if session.summary_path.exists():
                    break
    finally:
        timer.cancel()
    try:
        flwr.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    if session.summary_path.exists():
        return json.loads(session.summary_path.read_text())
    if time.monotonic() >= deadline:
        return {"status": "timeout", "reason": f"no summary within --timeout {timeout:g} s"}
    return None


def job_report(config: DeployConfig, workdir: Path, run_dir: Path, summary: dict[str, Any], status: str,
               reason: str | None, stop_report: dict[str, Any], wall: float, node_auth: bool = True,
               tls: bool = True) -> dict[str, Any]:
    """The JSON summary of ``speed deploy local`` / ``simulate``: the publishable ε first (with δ, the
    mechanism and τ), the ServerApp's summary, the owner's labels (from ``workdir/owner``), bytes per
    party, and which processes were started / left running."""
    from speed.deploy.owner_node import read_labels

    job_dir = workdir / "owner" / "jobs" / config.effective_job_id
    labels = read_labels(job_dir / "labels.jsonl")
    owner = summary.get("owner") or {}
    out: dict[str, Any] = {  # the publishable ε first, with δ, the mechanism and τ
        "epsilon": owner.get("epsilon"),
        "delta": owner.get("delta"),
        "delta_total": owner.get("delta_total"),
        "mechanism": owner.get("mechanism") or json.loads(config.noise or "null"),
        "tau": config.tau,
        "tau_effective_values": owner.get("tau_effective_values"),
        "target_epsilon": config.planned_target_epsilon,
        "epsilon_note": ("publishable ε of every query of this job, from the owner's ledger ("
                         + (owner.get("accounting") or "no ledger read") + ")"),
        "status": status if summary.get("status") is None else summary["status"],
        "reason": reason if summary.get("reason") is None else summary["reason"],
        "job_id": config.effective_job_id,
        "labels_received": len(labels),
        "queries": config.queries,
        "labels": {str(q): v for q, v in sorted(labels.items())},
        "wall_time_s": wall,
        "timings": summary.get("timings"),
        "bytes": summary.get("bytes"),
        "batches": summary.get("batches"),
        "holders_dropped": summary.get("holders_dropped"),
        "circuit": summary.get("circuit"),
        "pad_mode": summary.get("pad_mode"),
        "tls": tls,
        "node_auth": node_auth,
        "processes": {"started": stop_report.get("started"), "left_running": stop_report.get("left_running"),
                      "token": stop_report.get("token")},
        "ledger": str(job_dir / "ledger.jsonl"),
        "labels_file": str(job_dir / "labels.jsonl"),
        "run_dir": str(run_dir),
    }
    if status in ("interrupted", "failed", "timeout") and summary.get("status") is None:
        out["status"], out["reason"] = status, reason
    if config.task == "digits" and labels:
        try:
            from speed.deploy.task import _digits_splits

            _, splits = _digits_splits(config)
            truth = splits.pool_y
            out["label_accuracy_simulation_only"] = sum(int(truth[q]) == v for q, v in labels.items()) / len(labels)
        except Exception:  # informative only
            pass
    return out
