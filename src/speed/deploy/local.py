"""``speed deploy local``: a whole federation on loopback, with real Flower processes.

One ``flower-superlink`` (TLS with a CA and certificate made for the run, SuperNode
authentication on), one ``flower-supernode`` per party (the model owner and N holders,
each with its own ``--node-config`` and state directory), the run submitted with
``flwr run --stream``, progress lines relayed as they come, a JSON summary at the end,
and every process stopped afterwards — also on Ctrl-C, SIGTERM, an exception or a
timeout (:mod:`speed.deploy.processes`).

Layout under ``--workdir`` (default ``.speed-deploy``)::

    owner/            the owner's state: secret key, jobs/<job>/ledger.jsonl, labels.jsonl
    holder-<i>/       holder i's state: pad key, keysets, predictions
    runs/<stamp>/     certificates, node keys, pinned pad keys, Flower home, app, logs

The ``owner/`` and ``holder-*/`` directories persist between runs: rerunning the same
command resumes the job from the owner's ledger (answered queries are skipped).
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

from speed.deploy.config import DeployConfig, check_job_inputs, write_app_dir
from speed.deploy.processes import ProcessSet, signals_interrupt
from speed.deploy.sealing import HolderPadKey
from speed.deploy.tls import make_certificates, make_node_key
from speed.errors import InputError, SpeedError

__all__ = ["LocalOptions", "job_report", "run_local"]

CONNECTION = "speed-local"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BATCH = re.compile(r"\[speed\] batch (\d+) \((\d+)/(\d+)\)")


@dataclass
class LocalOptions:
    config: DeployConfig
    workdir: Path = Path(".speed-deploy")
    cache_dir: Path = Path(".speed-cache")
    teacher_table: Path | None = None  # task "table": the holders' prediction table (.npy)
    node_auth: bool = True
    start_holders: list[int] | None = None  # holders to start (default: all N)
    kill_holder: int | None = None  # fault injection: SIGKILL this holder's SuperNode ...
    kill_after: int = 1  # ... once this many batches are labelled (0: right after holder setup)
    timeout: float = 1800.0  # whole run, seconds
    on_line: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SpeedError(f"{name} not found (install flwr==1.42 in this environment)")
    return found


def _free_ports(n: int) -> list[int]:
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


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
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


def _node_config(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value}" if isinstance(value, int) else f"{key}={json.dumps(str(value))}")
    return " ".join(parts)


def check_local_options(options: LocalOptions) -> None:
    """Refuse bad options before any file is written or process started."""
    from speed.cli import options as opt

    config = options.config
    for i in options.start_holders or ():
        opt.check_int(i, "--start-holders", 0, config.holders - 1)
    if options.kill_holder is not None:
        opt.check_int(options.kill_holder, "--kill-holder", 0, config.holders - 1)
    opt.check_int(options.kill_after, "--kill-after", 0)
    opt.check_positive_float(options.timeout, "--timeout")
    opt.check_output_dir(options.workdir, "--workdir")
    opt.check_output_dir(options.cache_dir, "--cache-dir")
    check_job_inputs(config, options.teacher_table)  # last: it may load the digits


def resolve_noise(config: DeployConfig, say: Callable[[str], None]) -> DeployConfig:
    """The config with its noise mechanism resolved (calibrated once, here): its dict travels in the
    run config, so that no ClientApp process calibrates again and every party uses the same noise."""
    if not config.noise and config.planned_target_epsilon is not None:
        say(f"[speed] calibrating the {config.mechanism} noise to publishable ε ≤ {config.planned_target_epsilon:g} "
            f"for {config.queries} queries (δ = {config.delta:g}, τ = {config.tau:g})")
    config = config.resolved()
    say(f"[speed] noise: {config.noise}")
    return config


def run_local(options: LocalOptions) -> dict[str, Any]:
    """Run one job on a local federation; return the JSON summary (every process stopped)."""
    check_local_options(options)
    config = resolve_noise(options.config, options.on_line)
    started_at = time.perf_counter()
    workdir = options.workdir.expanduser().resolve()
    cache_dir = options.cache_dir.expanduser().resolve()
    run_dir = workdir / "runs" / (time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / "flwr-home"
    flwr_home.mkdir()

    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONWARNINGS": "ignore:pkg_resources is deprecated:UserWarning",
    })
    procs = ProcessSet(run_dir / "logs", env)
    stop_report: dict[str, Any] = {}

    def stop(*_: Any) -> None:
        stop_report.update(procs.stop_all(), token=procs.token)

    atexit.register(stop)
    summary: dict[str, Any] | None = None
    status, reason = "failed", None
    try:
        with signals_interrupt():  # Ctrl-C, SIGTERM and SIGHUP all end in the `finally` below
            try:
                summary = _run(options, config, workdir, cache_dir, run_dir, flwr_home, procs)
                status, reason = summary.get("status", "failed"), summary.get("reason")
            except KeyboardInterrupt as exc:
                status, reason = "interrupted", f"interrupted ({exc or 'Ctrl-C'}): every process is being stopped"
                options.on_line(f"[speed] {reason}")
            except SpeedError as exc:
                status, reason = "failed", str(exc)
            finally:
                stop()
    finally:
        atexit.unregister(stop)
    result = job_report(config, workdir, run_dir, summary or {}, status, reason, stop_report,
                        time.perf_counter() - started_at, node_auth=options.node_auth)
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def _run(options: LocalOptions, config: DeployConfig, workdir: Path, cache_dir: Path, run_dir: Path,
         flwr_home: Path, procs: ProcessSet) -> dict[str, Any]:
    say = options.on_line
    n = config.holders
    certs = make_certificates(run_dir / "certs")
    link_port, *node_ports = _free_ports(n + 2)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{link_port}"\nroot-certificates = "{certs.ca_cert}"\n'
    )
    app_dir = write_app_dir(run_dir / "app", config)

    # holders' pad keys, pinned for the owner (in a real federation: exchanged out of band)
    pins = run_dir / "holder-keys"
    pins.mkdir()
    for i in range(n):
        (pins / f"holder-{i}.pub").write_text(HolderPadKey(workdir / f"holder-{i}").public_hex() + "\n")

    argv = [_bin("flower-superlink"), "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile",
            str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--host", "127.0.0.1",
            "--port", str(link_port), "--disable-runtime-dependency-installation"]
    if options.node_auth:
        argv.append("--enable-supernode-auth")
    say(f"[speed] starting flower-superlink on 127.0.0.1:{link_port} (TLS{', SuperNode auth' if options.node_auth else ''})")
    link = procs.start("superlink", argv)
    _wait_port(link_port, link, 60, "flower-superlink", procs.log_dir / "superlink.log")

    holders = sorted(set(range(n) if options.start_holders is None else options.start_holders))
    parties: list[tuple[str, dict[str, Any]]] = [("owner", {
        "role": "owner", "state-dir": workdir / "owner", "cache-dir": cache_dir, "holder-keys": pins})]
    for i in holders:
        node = {"role": "holder", "partition-id": i, "state-dir": workdir / f"holder-{i}", "cache-dir": cache_dir}
        if options.teacher_table is not None:
            node["teacher-table"] = Path(options.teacher_table).expanduser().resolve()
        parties.append((f"holder-{i}", node))

    keys = {}
    if options.node_auth:
        for name, _ in parties:
            keys[name] = make_node_key(run_dir / "node-keys", name)
        registering = [(name, procs.start(f"register-{name}", [_bin("flwr"), "supernode", "register",
                                                              str(keys[name].public_key), CONNECTION]))
                       for name, _ in parties]
        for name, proc in registering:
            if proc.wait(timeout=120) != 0:
                raise SpeedError(f"registering {name}'s SuperNode key failed; see {procs.log_dir}/register-{name}.log")
        say(f"[speed] registered {len(parties)} SuperNode public keys with the SuperLink")

    for (name, node), port in zip(parties, node_ports):
        argv = [_bin("flower-supernode"), "--root-certificates", str(certs.ca_cert), "--superlink",
                f"127.0.0.1:{link_port}", "--port", str(port), "--node-config", _node_config(node)]
        if options.node_auth:
            argv += ["--auth-supernode-private-key", str(keys[name].private_key)]
        procs.start(name, argv)
    say(f"[speed] started {len(parties)} flower-supernode processes: {', '.join(name for name, _ in parties)}")

    argv = [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", *config.run_config_args()]
    flwr = procs.start("flwr-run", argv, capture=True, cwd=str(run_dir))
    summary: dict[str, Any] | None = None
    killed = False
    deadline = time.monotonic() + options.timeout
    log = open(procs.log_dir / "flwr-run.log", "a")
    timer = threading.Timer(options.timeout, lambda: procs.kill("flwr-run"))
    timer.daemon = True
    timer.start()
    try:
        assert flwr.stdout is not None
        for raw in flwr.stdout:
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
            log.write(line + "\n")
            log.flush()
            if "[speed]" not in line:
                continue
            line = line[line.index("[speed]"):]
            if line.startswith("[speed] SUMMARY "):
                summary = json.loads(line[len("[speed] SUMMARY "):])
                break
            say(line)
            if options.kill_holder is not None and not killed:
                match = _BATCH.search(line)
                done = int(match.group(2)) if match else (0 if line.startswith("[speed] holder setup") else -1)
                if done >= options.kill_after:
                    say(f"[speed] fault injection: SIGKILL holder {options.kill_holder}'s SuperNode")
                    procs.kill(f"holder-{options.kill_holder}")
                    killed = True
    finally:
        timer.cancel()
        log.close()
    if summary is None:
        if time.monotonic() >= deadline:
            return {"status": "timeout", "reason": f"no summary within --timeout {options.timeout:g} s"}
        try:
            flwr.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        dead = [f"{name} (status {proc.returncode})" for name, proc in procs.procs.items()
                if name in ("superlink", *(n for n, _ in parties)) and proc.poll() is not None
                and not (options.kill_holder is not None and name == f"holder-{options.kill_holder}")]
        what = f"{', '.join(dead)} exited during the run" if dead else "flwr run ended without a summary"
        return {"status": "failed",
                "reason": f"{what}; labels and ledger records so far are kept, rerun to resume (logs: {procs.log_dir})"}
    try:
        flwr.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    return summary


def job_report(config: DeployConfig, workdir: Path, run_dir: Path, summary: dict[str, Any], status: str,
               reason: str | None, stop_report: dict[str, Any], wall: float, node_auth: bool = True,
               tls: bool = True) -> dict[str, Any]:
    """The JSON summary of ``speed deploy local`` / ``simulate``: the ServerApp's summary, the owner's labels
    (from ``workdir/owner``), ε, bytes per party, and which processes were started / left running."""
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
