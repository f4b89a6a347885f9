"""``speed deploy simulate``: the same Flower App on Flower's simulation engine (many holders, one machine).

The ServerApp (:mod:`speed.deploy.server_app`) and the ClientApp
(:mod:`speed.deploy.client_app`) are exactly those of ``speed deploy local`` and of a
real deployment; only the transport changes.  A ``flower-superlink --simulation``
(TLS on loopback, started for the run) receives the job from ``flwr run --stream``
with a federation of N + 1 *virtual* SuperNodes; Flower's simulation engine (ray)
runs their ClientApp in a small pool of worker processes instead of one SuperNode
process per party.

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

import atexit
import importlib.util
import json
import os
import shutil
import subprocess
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
    write_app_dir,
)
from speed.deploy.local import _ANSI, _bin, _free_ports, _wait_port, job_report, resolve_noise
from speed.deploy.processes import ProcessSet, memory_of, processes_with_token, signals_interrupt
from speed.deploy.sealing import HolderPadKey
from speed.deploy.tls import make_certificates
from speed.errors import InputError, SpeedError

__all__ = ["SimulationOptions", "ray_available", "run_simulation"]

CONNECTION = "speed-simulation"
RAY_HINT = "pip install 'speed[simulation]' (flwr[simulation]==1.42.0, ray 2.55.1), or make setup"


def ray_available() -> bool:
    """Whether Flower's simulation engine can run here (ray importable)."""
    return importlib.util.find_spec("ray") is not None


@dataclass
class SimulationOptions:
    config: DeployConfig
    workdir: Path = Path(".speed-deploy/simulation")
    cache_dir: Path = Path(".speed-cache")
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
    from speed.cli import options as opt

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
    config = resolve_noise(options.config, options.on_line)
    started_at = time.perf_counter()
    workdir = options.workdir.expanduser().resolve()
    cache_dir = options.cache_dir.expanduser().resolve()
    run_dir = workdir / "runs" / (time.strftime("%Y%m%dT%H%M%S") + f"-sim-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    flwr_home = run_dir / "flwr-home"
    flwr_home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="speed-ray-"))  # short: ray's unix socket paths must fit 107 bytes

    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home), "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONWARNINGS": "ignore:pkg_resources is deprecated:UserWarning",
        "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(ray_tmp), "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "RAY_DEDUP_LOGS": "0",
    })
    procs = ProcessSet(run_dir / "logs", env)
    sampler = MemorySampler(procs.token, options.sample_interval, options.heartbeat, options.on_line)
    stop_report: dict[str, Any] = {}

    def stop(*_: Any) -> None:
        stop_report.update(procs.stop_all(), token=procs.token)

    atexit.register(stop)
    summary: dict[str, Any] | None = None
    status, reason = "failed", None
    memory: dict[str, Any] = {}
    try:
        with signals_interrupt():
            try:
                sampler.start()
                summary = _run(options, config, workdir, cache_dir, run_dir, flwr_home, procs, sampler)
                status, reason = summary.get("status", "failed"), summary.get("reason")
            except KeyboardInterrupt as exc:
                status, reason = "interrupted", f"interrupted ({exc or 'Ctrl-C'}): every process is being stopped"
                options.on_line(f"[speed] {reason}")
            except SpeedError as exc:
                status, reason = "failed", str(exc)
            finally:
                memory = sampler.stop()
                stop()
    finally:
        atexit.unregister(stop)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    result = job_report(config, workdir, run_dir, summary or {}, status, reason, stop_report,
                        time.perf_counter() - started_at, node_auth=False)
    result["simulation"] = {
        "engine": "Flower simulation runtime (flower-superlink --simulation, ray backend)",
        "virtual_supernodes": config.holders + 1, "cpus_per_node": options.cpus_per_node,
        "cpu_count": os.cpu_count(), "memory": memory,
    }
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def _run(options: SimulationOptions, config: DeployConfig, workdir: Path, cache_dir: Path, run_dir: Path,
         flwr_home: Path, procs: ProcessSet, sampler: MemorySampler) -> dict[str, Any]:
    say = options.on_line
    n = config.holders
    certs = make_certificates(run_dir / "certs")
    (link_port,) = _free_ports(1)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{link_port}"\nroot-certificates = "{certs.ca_cert}"\n'
    )
    table = str(Path(options.teacher_table).expanduser().resolve()) if options.teacher_table else ""
    app_dir = write_app_dir(run_dir / "app", config,
                            extra={SIM_DIR: str(workdir), SIM_CACHE_DIR: str(cache_dir), SIM_TEACHER_TABLE: table})

    # holders' pad keys, pinned for the owner (as speed deploy local does; out of band in a real federation)
    pins = workdir / "holder-keys"
    pins.mkdir(parents=True, exist_ok=True)
    for stale in pins.glob("holder-*.pub"):
        stale.unlink()
    for i in range(n):
        (pins / f"holder-{i}.pub").write_text(HolderPadKey(workdir / f"holder-{i}").public_hex() + "\n")

    argv = [_bin("flower-superlink"), "--simulation", "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile",
            str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--host", "127.0.0.1",
            "--port", str(link_port), "--disable-runtime-dependency-installation"]
    say(f"[speed] starting flower-superlink --simulation on 127.0.0.1:{link_port} (TLS); "
        f"{n + 1} virtual SuperNodes (holders 0..{n - 1}, owner = partition {n})")
    link = procs.start("superlink", argv)
    _wait_port(link_port, link, 60, "flower-superlink", procs.log_dir / "superlink.log")

    federation = {"num-supernodes": n + 1, "client-resources-num-cpus": int(options.cpus_per_node),
                  "client-resources-num-gpus": 0.0}
    argv = [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", *config.run_config_args()]
    for key, value in federation.items():
        argv += ["--federation-config", f"{key}={json.dumps(value)}"]
    flwr = procs.start("flwr-run", argv, capture=True, cwd=str(run_dir))
    summary: dict[str, Any] | None = None
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
            sampler.last_line = time.monotonic()
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
        dead = "superlink exited during the run; " if link.poll() is not None else ""
        return {"status": "failed", "reason": f"{dead}flwr run ended without a summary; labels and ledger records so "
                                              f"far are kept, rerun to resume (logs: {procs.log_dir})"}
    try:
        flwr.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    return summary
