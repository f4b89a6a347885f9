"""Start, watch and stop every process of a local deployment — and prove none is left.

Each process started here (SuperLink, SuperNodes, ``flwr`` CLI calls) gets

* its own session / process group (``start_new_session``), so a party can be killed
  with its whole tree (Flower's SuperExec, ServerApp and ClientApp processes);
* ``PR_SET_PDEATHSIG`` = SIGKILL on Linux, so it dies if this launcher is killed;
* an environment variable ``SPEED_DEPLOY_TOKEN=<random>`` that every descendant
  inherits (Flower spawns them with the parent's environment).

:meth:`ProcessSet.stop_all` sends SIGTERM to every process group, then SIGKILL to
whatever still runs, and finally scans ``/proc`` for any process carrying the token —
also orphans whose parent already exited.  :meth:`ProcessSet.leftovers` is that scan,
used by the tests to check that nothing survived.  Zombies (exited, not yet reaped by
their new parent) are not processes that run and are not counted.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["ProcessSet", "TOKEN_VAR", "memory_of", "processes_with_token", "signals_interrupt"]

TOKEN_VAR = "SPEED_DEPLOY_TOKEN"


def _pdeathsig() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:
            pass


def _proc_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split(" ", 1)[0]


def processes_with_token(token: str) -> list[int]:
    """Running (non-zombie) processes whose environment holds ``SPEED_DEPLOY_TOKEN=token``."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and _proc_state(int(entry.name)) not in (None, "Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`KeyboardInterrupt`.

    So Ctrl-C, ``kill`` and a closed terminal all reach the caller's ``finally`` that stops
    every process, also when the shell started us with SIGINT ignored (non-interactive
    shells do that for background jobs).  Outside the main thread it does nothing.
    """
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in caught}

    def on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in caught:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def memory_of(pids: list[int]) -> dict[str, int]:
    """Resident memory of ``pids`` together: ``rss`` (sum of RSS, counts shared pages once per
    process) and ``pss`` (proportional set size: shared pages split between their users, so the
    sum is what the processes really occupy), in bytes; processes that vanished count 0."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return {"rss": rss, "pss": pss}


class ProcessSet:
    """The processes of one local deployment, by name."""

    def __init__(self, log_dir: str | os.PathLike, env: dict[str, str] | None = None):
        self.token = secrets.token_hex(8)
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.env[TOKEN_VAR] = self.token
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self.started = 0
        self._stopped = False

    def start(self, name: str, argv: list[str], *, capture: bool = False, cwd: str | None = None) -> subprocess.Popen:
        """Start ``argv``; its output goes to ``<log_dir>/<name>.log`` (or a pipe if ``capture``)."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"process {name!r} is already running")
        if capture:
            stdout: IO[bytes] | int = subprocess.PIPE
        else:
            stdout = self._logs[name] = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env, cwd=cwd, start_new_session=True, preexec_fn=_pdeathsig)
        self.procs[name] = proc
        self.started += 1
        return proc

    def run(self, name: str, argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a short command to completion (output in its log); killed with its group on timeout."""
        proc = self.start(name, argv)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(name)
            raise
        return subprocess.CompletedProcess(argv, proc.returncode)

    def _group_signal(self, proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
        except (ProcessLookupError, PermissionError):
            pass

    def _descendants(self, pid: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        out, todo = [], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                out.append(child)
                todo.append(child)
        return out

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one party with its whole tree (a crash, for fault injection, or a stop)."""
        proc = self.procs.get(name)
        if proc is None:
            return
        tree = self._descendants(proc.pid)
        self._group_signal(proc, sig)
        for pid in tree:  # descendants in other sessions (Flower's SuperExec starts its own)
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._group_signal(proc, signal.SIGKILL)
            proc.wait(timeout=10)

    def leftovers(self) -> list[int]:
        return processes_with_token(self.token)

    def stop_all(self, grace: float = 8.0) -> dict:
        """SIGTERM every tracked group and descendant, wait ``grace`` s, SIGKILL the rest; report."""
        if self._stopped:
            return {"started": self.started, "left_running": self.leftovers()}
        pids: set[int] = set()
        for proc in self.procs.values():
            if proc.poll() is None:
                pids.update(self._descendants(proc.pid))
                self._group_signal(proc, signal.SIGTERM)
        pids.update(self.leftovers())
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for proc in self.procs.values():
                proc.poll()
            if not self.leftovers() and all(p.poll() is not None for p in self.procs.values()):
                break
            time.sleep(0.2)
        for _ in range(3):
            left = self.leftovers()
            for proc in self.procs.values():
                if proc.poll() is None:
                    self._group_signal(proc, signal.SIGKILL)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(0.3)
            if not self.leftovers():
                break
        for fh in self._logs.values():
            fh.close()
        self._stopped = True
        return {"started": self.started, "left_running": self.leftovers()}
