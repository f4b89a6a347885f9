"""``speed deploy simulate``: the same Flower App on Flower's simulation engine (many holders, one machine).

The ServerApp (:mod:`speed.deploy.server_app`) and the ClientApp
(:mod:`speed.deploy.client_app`) are exactly those of ``speed deploy local`` and of a
real deployment; only the transport changes.  A ``flower-superlink --simulation``
(TLS on loopback, started for the run) receives the job from ``flwr run --stream``
with a federation of N + 1 *virtual* SuperNodes; Flower's simulation engine (ray)
runs their ClientApp in a small pool of worker processes instead of one SuperNode
process per party.  Starting, streaming, the summary file and stopping are the launcher's
(:mod:`speed.deploy.launcher`), shared with ``speed deploy local``.

A virtual SuperNode's node config has only ``partition-id`` and ``num-partitions``,
so the app carries a ``simulation-dir`` in its run config and
:meth:`speed.deploy.config.NodeConfig.from_context` maps partition ``i < N`` to holder
*i* and partition ``N`` to the model owner, with the same state directories as
``speed deploy local`` (``<workdir>/owner``, ``<workdir>/holder-<i>``): what a real
SuperNode's ``--node-config`` says.  Holders' pad keys are pinned at the owner
(``<workdir>/holder-keys``) as in ``speed deploy local``.

Needs ray (``pip install 'speed[simulation]'``: ``flwr[simulation]==1.42.0``, ray
2.55.1); without it :func:`run_simulation` refuses with a one-line error.  Every
process it starts (SuperLink, ``flwr run``, the simulation process and ray's
processes) carries the marker of :mod:`speed.deploy.processes` and is stopped at the
end, also on Ctrl-C or failure; peak memory of all of them together is sampled.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from speed.deploy.config import (
    SIM_CACHE_DIR,
    SIM_DIR,
    SIM_TEACHER_TABLE,
    DeployConfig,
    check_job_inputs,
    default_cache_dir,
    default_workdir,
)
from speed.deploy.launcher import Session, bin_path, free_ports, launch, stream_job, wait_port
from speed.deploy.processes import memory_of, processes_with_token
from speed.deploy.tls import make_certificates
from speed.errors import InputError
from speed import validation as opt

__all__ = ["SimulationOptions", "ray_available", "run_simulation"]

CONNECTION = "speed-simulation"
RAY_HINT = "pip install 'speed[simulation]' (flwr[simulation]==1.42.0, ray 2.55.1), or make setup"


def ray_available() -> bool:
    """Whether Flower's simulation engine can run here (ray importable)."""
    return importlib.util.find_spec("ray") is not None


@dataclass
class SimulationOptions:
    config: DeployConfig
    workdir: Path = field(default_factory=lambda: default_workdir() / "simulation")
    cache_dir: Path = field(default_factory=default_cache_dir)
    teacher_table: Path | None = None  # task "table": the holders' prediction table (.npy)
    cpus_per_node: int = 1  # ray CPUs per ClientApp worker: workers = cores / this (Flower wants an integer)
    timeout: float = 3600.0  # whole run, seconds
    sample_interval: float = 1.0  # seconds between memory samples
    heartbeat: float = 30.0  # seconds between progress lines when the ServerApp is quiet
    on_line: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


class MemorySampler:
    """Samples the memory of every process carrying a deployment's marker (background thread)."""

    def __init__(self, token: str, interval: float, heartbeat: float, say: Callable[[str], None]):
        self.token, self.interval, self.heartbeat, self.say = token, float(interval), float(heartbeat), say
        self.peak = {"rss": 0, "pss": 0, "processes": 0}
        self.samples = 0
        self.last_line = time.monotonic()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="speed-memory-sampler", daemon=True)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def sample(self) -> dict[str, int]:
        pids = processes_with_token(self.token)
        mem = memory_of(pids)
        mem["processes"] = len(pids)
        for key in self.peak:
            self.peak[key] = max(self.peak[key], mem[key])
        self.samples += 1
        return mem

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            mem = self.sample()
            if time.monotonic() - self.last_line >= self.heartbeat:
                self.say(f"[speed] simulation running for {time.monotonic() - self._start:.0f} s: "
                         f"{mem['processes']} processes, {mem['pss'] / 1e9:.2f} GB (PSS), "
                         f"peak {self.peak['pss'] / 1e9:.2f} GB")
                self.last_line = time.monotonic()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        return {"peak_rss_bytes": self.peak["rss"], "peak_pss_bytes": self.peak["pss"],
                "peak_processes": self.peak["processes"], "samples": self.samples, "interval_s": self.interval,
                "note": "all processes of the run together (SuperLink, flwr run, simulation, ray); RSS counts "
                        "shared pages once per process, PSS splits them"}


def check_simulation_options(options: SimulationOptions) -> None:
    """Refuse bad options before any file is written or process started."""

    opt.check_positive_int(options.cpus_per_node, "--cpus-per-node")
    opt.check_positive_float(options.timeout, "--timeout")
    opt.check_output_dir(options.workdir, "--workdir")
    opt.check_output_dir(options.cache_dir, "--cache-dir")
    check_job_inputs(options.config, options.teacher_table)  # last: it may load the digits


def run_simulation(options: SimulationOptions) -> dict[str, Any]:
    """Run one job with N virtual holders + the owner on Flower's simulation engine; return the JSON summary."""
    if not ray_available():
        raise InputError(f"Flower's simulation engine needs ray, which is not installed: {RAY_HINT}")
    check_simulation_options(options)
    ray_tmp = Path(tempfile.mkdtemp(prefix="speed-ray-"))  # short: ray's unix socket paths must fit 107 bytes
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(ray_tmp), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
           "RAY_DEDUP_LOGS": "0"}

    def body(session: Session) -> dict[str, Any]:
        sampler = MemorySampler(session.procs.token, options.sample_interval, options.heartbeat, session.say)
        session.report["simulation"] = {
            "engine": "Flower simulation runtime (flower-superlink --simulation, ray backend)",
            "virtual_supernodes": session.config.holders + 1, "cpus_per_node": options.cpus_per_node,
            "cpu_count": os.cpu_count(), "memory": {},
        }
        session.on_stop.append(lambda: session.report["simulation"].update(memory=sampler.stop()))
        sampler.start()
        return _run(options, session, sampler)

    try:
        return launch(options.config, options.workdir, options.cache_dir, "-sim", options.on_line, body, env=env,
                      node_auth=False)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _run(options: SimulationOptions, session: Session, sampler: MemorySampler) -> dict[str, Any]:
    say, procs, config, run_dir = session.say, session.procs, session.config, session.run_dir
    n = config.holders
    certs = make_certificates(run_dir / "certs")
    (link_port,) = free_ports(1)
    session.connect(CONNECTION, link_port, certs.ca_cert)
    table = str(Path(options.teacher_table).expanduser().resolve()) if options.teacher_table else ""
    app_dir = session.write_app({SIM_DIR: str(session.workdir), SIM_CACHE_DIR: str(session.cache_dir),
                                 SIM_TEACHER_TABLE: table})
    # holders' pad keys, pinned for the owner (as speed deploy local does; out of band in a real federation)
    session.pin_holder_keys(session.workdir / "holder-keys")

    argv = [bin_path("flower-superlink"), "--simulation", "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile",
            str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--host", "127.0.0.1",
            "--port", str(link_port), "--disable-runtime-dependency-installation"]
    say(f"[speed] starting flower-superlink --simulation on 127.0.0.1:{link_port} (TLS); "
        f"{n + 1} virtual SuperNodes (holders 0..{n - 1}, owner = partition {n})")
    link = procs.start("superlink", argv)
    wait_port(link_port, link, 60, "flower-superlink", procs.log_dir / "superlink.log")

    federation = {"num-supernodes": n + 1, "client-resources-num-cpus": int(options.cpus_per_node),
                  "client-resources-num-gpus": 0.0}
    argv = [bin_path("flwr"), "run", str(app_dir), CONNECTION, "--stream", *config.run_config_args()]
    for key, value in federation.items():
        argv += ["--federation-config", f"{key}={json.dumps(value)}"]

    def heard(line: str) -> None:
        sampler.last_line = time.monotonic()

    summary = stream_job(session, argv, options.timeout, on_line=heard)
    if summary is None:
        dead = "superlink exited during the run; " if link.poll() is not None else ""
        return {"status": "failed", "reason": f"{dead}flwr run ended without a summary; labels and ledger records so "
                                              f"far are kept, rerun to resume (logs: {procs.log_dir})"}
    return summary
