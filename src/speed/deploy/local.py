"""``speed deploy local``: a whole federation on loopback, with real Flower processes.

One ``flower-superlink`` (TLS with a CA and certificate made for the run, SuperNode
authentication on), one ``flower-supernode`` per party (the model owner and N holders,
each with its own ``--node-config`` and state directory), the run submitted with
``flwr run --stream`` (:mod:`speed.deploy.launcher`, shared with ``speed deploy simulate``),
progress lines relayed as they come, the job summary read from the JSON file the
ServerApp writes, and every process stopped afterwards — also on Ctrl-C, SIGTERM, an
exception or a timeout (:mod:`speed.deploy.processes`).

Layout under ``--workdir`` (default ``<cache dir>/deploy``, the cache dir being
``$SPEED_CACHE_DIR`` or ``.speed-cache``)::

    owner/            the owner's state: secret key, jobs/<job>/ledger.jsonl, labels.jsonl
    holder-<i>/       holder i's state: pad key, keysets, predictions
    runs/<stamp>/     certificates, node keys, pinned pad keys, Flower home, app, logs, summaries

The ``owner/`` and ``holder-*/`` directories persist between runs: rerunning the same
command resumes the job from the owner's ledger (answered queries are skipped).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from speed.deploy.config import DeployConfig, check_job_inputs, default_cache_dir, default_workdir
from speed.deploy.launcher import Session, bin_path, free_ports, job_report, launch, stream_job, wait_port
from speed.deploy.tls import make_certificates, make_node_key
from speed.errors import SpeedError
from speed import validation as opt

__all__ = ["LocalOptions", "job_report", "run_local"]

CONNECTION = "speed-local"
_BATCH = re.compile(r"\[speed\] batch (\d+) \((\d+)/(\d+)\)")


@dataclass
class LocalOptions:
    config: DeployConfig
    workdir: Path = field(default_factory=default_workdir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    teacher_table: Path | None = None  # task "table": the holders' prediction table (.npy)
    node_auth: bool = True
    start_holders: list[int] | None = None  # holders to start (default: all N)
    kill_holder: int | None = None  # fault injection: SIGKILL this holder's SuperNode ...
    kill_after: int = 1  # ... once this many batches are labelled (0: right after holder setup)
    timeout: float = 1800.0  # whole run, seconds
    on_line: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


def _node_config(values: dict[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value}" if isinstance(value, int) else f"{key}={json.dumps(str(value))}")
    return " ".join(parts)


def check_local_options(options: LocalOptions) -> None:
    """Refuse bad options before any file is written or process started."""

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


def run_local(options: LocalOptions) -> dict[str, Any]:
    """Run one job on a local federation; return the JSON summary (every process stopped)."""
    check_local_options(options)
    return launch(options.config, options.workdir, options.cache_dir, "", options.on_line,
                  lambda session: _run(options, session), node_auth=options.node_auth)


def _run(options: LocalOptions, session: Session) -> dict[str, Any]:
    say, procs, config, run_dir = session.say, session.procs, session.config, session.run_dir
    n = config.holders
    certs = make_certificates(run_dir / "certs")
    link_port, *node_ports = free_ports(n + 2)
    session.connect(CONNECTION, link_port, certs.ca_cert)
    app_dir = session.write_app()
    pins = session.pin_holder_keys(run_dir / "holder-keys")

    argv = [bin_path("flower-superlink"), "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile",
            str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--host", "127.0.0.1",
            "--port", str(link_port), "--disable-runtime-dependency-installation"]
    if options.node_auth:
        argv.append("--enable-supernode-auth")
    say(f"[speed] starting flower-superlink on 127.0.0.1:{link_port} (TLS{', SuperNode auth' if options.node_auth else ''})")
    link = procs.start("superlink", argv)
    wait_port(link_port, link, 60, "flower-superlink", procs.log_dir / "superlink.log")

    holders = sorted(set(range(n) if options.start_holders is None else options.start_holders))
    parties: list[tuple[str, dict[str, Any]]] = [("owner", {
        "role": "owner", "state-dir": session.workdir / "owner", "cache-dir": session.cache_dir, "holder-keys": pins})]
    for i in holders:
        node = {"role": "holder", "partition-id": i, "state-dir": session.workdir / f"holder-{i}",
                "cache-dir": session.cache_dir}
        if options.teacher_table is not None:
            node["teacher-table"] = Path(options.teacher_table).expanduser().resolve()
        parties.append((f"holder-{i}", node))

    keys = {}
    if options.node_auth:
        for name, _ in parties:
            keys[name] = make_node_key(run_dir / "node-keys", name)
        registering = [(name, procs.start(f"register-{name}", [bin_path("flwr"), "supernode", "register",
                                                              str(keys[name].public_key), CONNECTION]))
                       for name, _ in parties]
        for name, proc in registering:
            if proc.wait(timeout=120) != 0:
                raise SpeedError(f"registering {name}'s SuperNode key failed; see {procs.log_dir}/register-{name}.log")
        say(f"[speed] registered {len(parties)} SuperNode public keys with the SuperLink")

    for (name, node), port in zip(parties, node_ports):
        argv = [bin_path("flower-supernode"), "--root-certificates", str(certs.ca_cert), "--superlink",
                f"127.0.0.1:{link_port}", "--port", str(port), "--node-config", _node_config(node)]
        if options.node_auth:
            argv += ["--auth-supernode-private-key", str(keys[name].private_key)]
        procs.start(name, argv)
    say(f"[speed] started {len(parties)} flower-supernode processes: {', '.join(name for name, _ in parties)}")

    killed = False

    def fault_injection(line: str) -> None:
        nonlocal killed
        if options.kill_holder is None or killed:
            return
        match = _BATCH.search(line)
        done = int(match.group(2)) if match else (0 if line.startswith("[speed] holder setup") else -1)
        if done >= options.kill_after:
            say(f"[speed] fault injection: SIGKILL holder {options.kill_holder}'s SuperNode")
            procs.kill(f"holder-{options.kill_holder}")
            killed = True

    argv = [bin_path("flwr"), "run", str(app_dir), CONNECTION, "--stream", *config.run_config_args()]
    summary = stream_job(session, argv, options.timeout, on_line=fault_injection)
    if summary is None:
        dead = [f"{name} (status {proc.returncode})" for name, proc in procs.procs.items()
                if name in ("superlink", *(n for n, _ in parties)) and proc.poll() is not None
                and not (options.kill_holder is not None and name == f"holder-{options.kill_holder}")]
        what = f"{', '.join(dead)} exited during the run" if dead else "flwr run ended without a summary"
        return {"status": "failed",
                "reason": f"{what}; labels and ledger records so far are kept, rerun to resume (logs: {procs.log_dir})"}
    return summary
