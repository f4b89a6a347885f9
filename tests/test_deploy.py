"""SPEED on Flower (speed.deploy).

* Fast unit tests: records, run config, sealed pads, certificates and keys, process
  supervision, the CLI.
* In-process federation (``FakeGrid``: the real ServerApp logic and the real ClientApp,
  messages passed by function call, real TFHE on a small circuit): labels equal
  :func:`speed.protocol.label_queries`; the server never sees a pad (seeded pads) or a share
  (shared pads, the default); a silent holder is replaced by a stand-in (with shared pads:
  stand-in shares under a new shell) and the ledger records the reduced τ; a strict job stops
  and a rerun resumes with the same labels as one uninterrupted run.
* ``slow``: a real ``flower-superlink`` and ``flower-supernode`` processes on loopback with
  TLS and SuperNode authentication (``speed deploy local``); labels equal the in-process
  run, one variant SIGKILLs a holder mid-run; no process survives either.
* ``slow``: the same app on Flower's simulation engine (``speed deploy simulate``, needs
  ray from ``speed[simulation]``; skipped with the reason when ray is missing): labels
  equal the in-process run, no process survives.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from speed import messages
from speed.crypto.spec import reference_argmax
from speed.deploy import records
from speed.deploy.config import DeployConfig, NodeConfig, app_pyproject
from speed.deploy.owner_node import read_labels
from speed.deploy.processes import ProcessSet, processes_with_token
from speed.deploy.sealing import HolderPadKey, PinnedHolderKeys, open_pad, seal_pad
from speed.errors import CiphertextError, InputError

from conftest import make_holders

N, K, B, Q = 3, 3, 2, 4
ROWS = 32


def job_config(job_id: str, **kw) -> DeployConfig:
    base = dict(task="table", holders=N, classes=K, queries=Q, batch_size=B, mechanism="lattice", gamma=2.0, seed=0,
                job_id=job_id,
                vote_timeout=3.0, owner_timeout=120.0, setup_timeout=300.0, node_wait=1.0, poll_interval=0.02)
    base.update(kw)
    return DeployConfig(**base)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def fed_home(tmp_path_factory):
    """Parties' state shared by every federation test (keys, keysets, pad keys); one job id per test."""
    home = tmp_path_factory.mktemp("federation")
    table = np.random.default_rng(7).integers(0, K, size=(ROWS, N))
    np.save(home / "table.npy", table)
    return home


@pytest.fixture(scope="session")
def table(fed_home):
    return np.load(fed_home / "table.npy")


@pytest.fixture(scope="session")
def reference(table, cache_dir):
    """Labels of the in-process protocol (speed.protocol.label_queries) with the same seeds."""
    from speed.owner.owner import ModelOwner
    from speed.protocol import label_queries, setup_parties

    config = job_config("reference")
    spec = config.circuit_spec(K)
    owner = ModelOwner(spec, cache_dir=cache_dir)
    holders = make_holders(spec, table, scale=config.noise_scale, seed=config.seed)
    server = setup_parties(owner, holders)
    result = label_queries(owner, server, holders, np.arange(ROWS), np.arange(Q), progress=False)
    assert (result.labels == result.clear_noisy_argmax).all()
    return {int(q): int(v) for q, v in zip(result.query_ids, result.labels)}


def node_configs(home: Path, cache_dir: Path, holders=range(N)) -> list[dict]:
    nodes = [{"role": "owner", "state-dir": str(home / "owner"), "cache-dir": str(cache_dir)}]
    for i in holders:
        nodes.append({"role": "holder", "partition-id": i, "state-dir": str(home / f"holder-{i}"),
                      "teacher-table": str(home / "table.npy")})
    return nodes


class FakeGrid:
    """A Flower Grid whose SuperNodes are ClientApp calls in this process.

    ``silent_from[node index] = k``: that node answers its first k messages, then never again
    (a crashed SuperNode that the SuperLink still lists).
    """

    def __init__(self, nodes: list[dict], config: DeployConfig, run_id: int, silent_from: dict[int, int] | None = None):
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        from speed.deploy.client_app import app

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 1
        self.app = app
        self.contexts = {
            100 + i: Context(run_id=run_id, node_id=100 + i, node_config=dict(nc), state=RecordDict(),
                             run_config=config.to_run_config())
            for i, nc in enumerate(nodes)
        }
        self.silent_from = {100 + i: k for i, k in (silent_from or {}).items()}
        self.answered: dict[int, int] = {n: 0 for n in self.contexts}
        self.inbox: dict[str, object] = {}
        self.seen: list[tuple[str, int, str, object]] = []  # everything the server sent or received
        self._ids = itertools.count()

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, msgs):
        ids = []
        for m in msgs:
            mid = f"m{next(self._ids)}"
            m.metadata.__dict__["_message_id"] = mid
            self.inbox[mid] = m
            self.seen.append(("to", m.metadata.dst_node_id, m.metadata.message_type, m.content))
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            m = self.inbox.get(mid)
            node = m.metadata.dst_node_id
            if node in self.silent_from and self.answered[node] >= self.silent_from[node]:
                continue
            del self.inbox[mid]
            self.answered[node] += 1
            reply = self.app(m, self.contexts[node])
            self.seen.append(("from", node, m.metadata.message_type, reply.content))
            out.append(reply)
        return out


def run_fake(home, cache_dir, config, run_id, **kw):
    from speed.deploy.server_app import run_job

    grid = FakeGrid(node_configs(home, cache_dir), config, run_id, **kw)
    lines: list[str] = []
    summary = run_job(grid, config, session=str(run_id), log=lines.append)
    labels = read_labels(home / "owner" / "jobs" / config.effective_job_id / "labels.jsonl")
    return summary, labels, grid, lines


def holder_setups(grid) -> list:
    """The ``query.setup`` contents the server sent to holders."""
    return [c for kind, n, t, c in grid.seen if kind == "to" and t == "query.setup" and "setup" in c.config_records]


def server_blobs(grid) -> list[bytes]:
    """Every byte field of every message the server sent or received."""
    return [bytes(a.data) for kind, node, mtype, content in grid.seen
            for rec in content.array_records.values() for a in rec.values()]


def ledger_records(home: Path, job_id: str) -> list[dict]:
    path = home / "owner" / "jobs" / job_id / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- unit tests
def test_records_roundtrip_every_message_type():
    from flwr.app import RecordDict

    samples = [
        messages.CircuitBundle(spec={"num_holders": 3}, program=b"\x00prog" * 3, program_id="p1",
                               pad_mode="seeded", pad_layout={"size": 10}),
        messages.EvaluationKeys(keyset_id="k", data=os.urandom(7 * 2**20)),  # > one 5 MiB Flower chunk
        messages.QueryBatch(batch_id=2, query_ids=(5, 9)),
        messages.Pad(pad_id="x", keyset_id="k", holder_id=1, batch_id=2, data=b"pad"),
        messages.EncryptedVote(batch_id=2, holder_id=1, pad_id="x", keyset_id="k", data=b"vote"),
        messages.EncryptedLabels(batch_id=2, query_ids=(5, 9), holder_ids=(0, 1, 2), keyset_id="k", data=b"lab"),
        messages.PadShell(shell_id="s", keyset_id="k", batch_id=2, data=b"shell"),
    ]
    content = RecordDict()
    for i, m in enumerate(samples):
        records.put(content, f"m{i}", m)
    for i, m in enumerate(samples):
        assert records.get(content, f"m{i}", type(m)) == m
    assert len(content.array_records["m1.bytes"]["data"].slice_array()) == 2  # Flower chunks it (5 MiB)
    with pytest.raises(InputError, match="holds a QueryBatch"):
        records.get(content, "m2", messages.Pad)
    with pytest.raises(InputError, match="lacks"):
        records.get(content, "nope", messages.Pad)
    records.put_many(content, "pads", samples[3:4])
    assert records.get_many(content, "pads", messages.Pad) == [samples[3]]
    assert records.content_bytes(content) > 7 * 2**20


def test_run_config_roundtrip_and_flower_parsing(tmp_path):
    import tomli
    from flwr.common.config import parse_config_args

    config = DeployConfig(task="table", classes=4, holders=7, gamma=2.5, production_noise=True, min_holders=5,
                          job_id="j")
    parsed = parse_config_args([a for a in config.run_config_args() if a != "--run-config"])
    assert DeployConfig.from_run_config(parsed) == config
    app = tomli.loads(app_pyproject(config))
    assert app["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "speed.deploy.server_app:app", "clientapp": "speed.deploy.client_app:app"}
    assert DeployConfig.from_run_config(app["tool"]["flwr"]["app"]["config"]) == config
    assert DeployConfig().effective_job_id != DeployConfig(seed=1).effective_job_id
    assert DeployConfig(job_id="x").effective_job_id == "x"
    with pytest.raises(InputError):
        DeployConfig(min_holders=9, holders=5)
    with pytest.raises(InputError):
        NodeConfig.from_node_config({"role": "holder"})
    node = NodeConfig.from_node_config({"role": "holder", "partition-id": 3, "state-dir": str(tmp_path)})
    assert (node.partition_id, node.state_dir) == (3, tmp_path)


def test_noise_options_resolve_travel_in_run_config_and_name_the_job():
    from flwr.common.config import parse_config_args

    from speed.deploy.config import DEFAULT_TARGET_EPSILON
    from speed.pipeline import DEFAULT_TARGET_EPSILON as DEMO_DEFAULT
    from speed.privacy.mechanisms import LatticeLaplace, Skellam

    assert DEFAULT_TARGET_EPSILON == DEMO_DEFAULT
    config = DeployConfig(task="table", classes=3, holders=3, sigma=2.5).resolved()
    assert config.mechanism == "skellam" and config.noise_mechanism() == Skellam(2.5)
    assert config.planned_target_epsilon is None
    parsed = parse_config_args([a for a in config.run_config_args() if a != "--run-config"])
    assert DeployConfig.from_run_config(parsed) == config  # the mechanism's dict travels in the run config
    lattice = DeployConfig(mechanism="lattice", gamma=2.0).resolved()
    assert lattice.noise_mechanism() == LatticeLaplace(2.0, 1)
    assert DeployConfig().planned_target_epsilon == DEFAULT_TARGET_EPSILON
    ids = {DeployConfig(mechanism="lattice").effective_job_id, DeployConfig(sigma=3.0).effective_job_id,
           DeployConfig(sigma=4.0).effective_job_id, DeployConfig(target_epsilon=2.0).effective_job_id}
    assert len(ids) == 4  # another mechanism is another job (the ledger would refuse it)
    for bad, match in [(dict(mechanism="lattice", sigma=2.0), "--sigma applies"),
                       (dict(sigma=2.0, target_epsilon=1.0), "not both"), (dict(sigma=-1.0), "--sigma"),
                       (dict(target_epsilon=float("nan")), "--target-epsilon"), (dict(mechanism="gamma"), "--mechanism"),
                       (dict(sigma=2.0, noise='{"mechanism": "skellam", "sigma": 3.0}'), "does not match"),
                       (dict(noise='{"mechanism": "lattice", "gamma": 3.3, "resolution": 1}'), "does not match")]:
        with pytest.raises(InputError, match=match):
            DeployConfig(**bad)


def test_sealed_pads_open_only_for_their_holder_batch_and_keyset(tmp_path):
    key_a, key_b = HolderPadKey(tmp_path / "a"), HolderPadKey(tmp_path / "b")
    assert key_a.public_hex() == key_a.public_hex() and oct(key_a.path.stat().st_mode)[-3:] == "600"
    pad = messages.Pad(pad_id="p", keyset_id="k", holder_id=1, batch_id=4, data=b"secret pad bytes" * 4)
    sealed = seal_pad(pad, key_a.public_hex())
    assert pad.data not in sealed.data and open_pad(sealed, key_a.private_key()) == pad
    with pytest.raises(CiphertextError):
        open_pad(sealed, key_b.private_key())  # another holder
    for change in ({"batch_id": 5}, {"holder_id": 2}, {"keyset_id": "other"}, {"pad_id": "q"}):
        from dataclasses import replace

        with pytest.raises(CiphertextError):
            open_pad(replace(sealed, **change), key_a.private_key())
    # the owner: trust on first use, then refuse a changed key; pinned keys refuse anything else
    tofu = PinnedHolderKeys(tmp_path / "owner")
    assert tofu.check({1: key_a.public_hex()}) == {1: key_a.public_hex()}
    with pytest.raises(InputError, match="changed"):
        tofu.check({1: key_b.public_hex()})
    pins = tmp_path / "pins"
    pins.mkdir()
    (pins / "holder-1.pub").write_text(key_a.public_hex() + "\n")
    pinned = PinnedHolderKeys(tmp_path / "owner2", pins)
    pinned.check({1: key_a.public_hex()})
    with pytest.raises(InputError, match="pinned"):
        pinned.check({1: key_b.public_hex()})
    with pytest.raises(InputError, match="no pinned"):
        pinned.check({2: key_a.public_hex()})


def test_certificates_and_node_keys_load(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from speed.deploy.tls import make_certificates, make_node_key

    c = make_certificates(tmp_path, ["superlink.example.org", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(c.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(c.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "superlink.example.org" in san.get_values_for_type(x509.DNSName)
    assert oct(c.server_key.stat().st_mode)[-3:] == "600"
    k = make_node_key(tmp_path, "hospital-3")
    load_ssh_private_key(k.private_key.read_bytes(), password=None)
    assert load_ssh_public_key(k.public_key.read_bytes()).curve.name == "secp384r1"


def test_process_set_kills_trees_and_finds_leftovers(tmp_path):
    procs = ProcessSet(tmp_path)
    # a party whose child ignores SIGTERM and lives in its own session (like Flower's SuperExec)
    script = "import subprocess, signal, time, sys\n" \
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
             "subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(signal.SIGTERM, " \
             "signal.SIG_IGN); time.sleep(300)'], start_new_session=True)\n" \
             "time.sleep(300)\n"
    procs.start("stubborn", [sys.executable, "-c", script])
    procs.start("victim", ["sh", "-c", "sleep 300 & sleep 300"])
    deadline = time.monotonic() + 20
    while len(procs.leftovers()) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(procs.leftovers()) >= 5  # sh + 2 sleeps + python + its child
    procs.kill("victim")
    assert procs.procs["victim"].poll() is not None
    report = procs.stop_all(grace=1.0)
    assert report["left_running"] == [] and processes_with_token(procs.token) == []


def test_server_app_never_loads_owner_code():
    code = ("import sys, speed.deploy.server_app as s; assert s.app is not None; "
            "bad = [m for m in sys.modules if m.startswith(('speed.owner', 'speed.deploy.owner_node'))]; "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_client_mod_times_every_handler_and_turns_errors_into_one_line(monkeypatch):
    """The per-message timing and error handling is one Flower mod on the ClientApp, not per handler."""
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from speed.deploy import client_app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # as FakeGrid does
    assert client_app.app._mods == [client_app.speed_mod]
    message = Message(RecordDict(), dst_node_id=1, message_type="query.hello")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})

    def ok(msg, ctx):
        return Message(RecordDict(), reply_to=msg)

    def boom(msg, ctx):
        raise InputError("no such holder")

    reply = client_app.speed_mod(message, context, ok)
    assert records.get_json(reply.content, "timing")["handler_s"] >= 0
    reply = client_app.speed_mod(message, context, boom)
    assert records.get_json(reply.content, "error")["error"] == "InputError: no such holder"
    # through the app: a node without a role answers hello with the error record
    reply = client_app.app(message, context)
    assert "role" in records.get_json(reply.content, "error")["error"]


def test_server_app_writes_the_summary_file_the_launcher_reads(tmp_path, monkeypatch):
    from speed.deploy import server_app
    from speed.deploy.config import SUMMARY_FILE, default_cache_dir, default_workdir, write_summary
    from speed.deploy.local import LocalOptions

    assert server_app.write_summary is write_summary  # what the ServerApp calls

    lines: list[str] = []
    write_summary(tmp_path / "run" / "job-summary.json", {"status": "completed", "owner": {}}, log=lines.append)
    assert json.loads((tmp_path / "run" / "job-summary.json").read_text())["status"] == "completed"
    assert lines and not list((tmp_path / "run").glob(".*tmp"))
    assert SUMMARY_FILE in app_pyproject(extra={SUMMARY_FILE: "/x"})
    # the work folder defaults to the cache directory, not the current directory
    monkeypatch.setenv("SPEED_CACHE_DIR", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache" and default_workdir() == tmp_path / "cache" / "deploy"
    assert LocalOptions(config=DeployConfig()).workdir == tmp_path / "cache" / "deploy"
    monkeypatch.delenv("SPEED_CACHE_DIR")
    assert default_workdir() == Path(".speed-cache") / "deploy"


def test_cli_help_lists_deploy_commands():
    out = subprocess.run([sys.executable, "-m", "speed.cli.main", "deploy", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0
    for action in ("local", "app", "certs", "node-key", "pad-key"):
        assert action in out.stdout


def test_cli_local_refuses_bad_arguments_in_one_line(tmp_path):
    from speed.cli.main import main

    assert main(["deploy", "local", "--task", "table", "--classes", "3", "--holders", "3",
                 "--workdir", str(tmp_path)]) == 2  # table task without --teacher-table


# ------------------------------------------------------------------- in-process federation
def test_fake_grid_without_owner_stops_with_a_clear_message(tmp_path, cache_dir):
    table = np.zeros((ROWS, N), dtype=np.int64)
    np.save(tmp_path / "table.npy", table)
    config = job_config("no-owner")
    summary, labels, grid, lines = run_fake(tmp_path, cache_dir, config, run_id=21, silent_from={0: 0})
    assert summary["status"] == "stopped" and "role='owner'" in summary["reason"]
    assert labels == {} and summary["owner"] == {}
    assert not any(t == "query.setup" for kind, n, t, c in grid.seen)  # nothing sent to holders


@pytest.mark.slow
def test_fake_grid_labels_equal_in_process_and_server_never_sees_a_pad(fed_home, cache_dir, reference):
    config = job_config("fake-full", pad_mode="seeded")
    summary, labels, grid, lines = run_fake(fed_home, cache_dir, config, run_id=11)
    assert summary["status"] == "completed", summary["reason"]
    assert labels == reference
    assert [b["holders_answered"] for b in summary["batches"]] == [N, N]
    assert summary["owner"]["labels_stored"] == Q and summary["owner"]["tau_effective_values"] == [1.0]
    # seeded pads: holders get the bundle, never the evaluation keys (the server and the owner's
    # stand-ins still have them)
    to_holders = holder_setups(grid)
    assert len(to_holders) == N and not any("keys" in c.config_records for c in to_holders)
    assert all(summary["bytes"][f"holder-{i}"]["bytes_sent_to"] < 2**20 for i in range(N))
    # every byte the server handled: no pad in clear.  A seeded vote keeps its pad's 16-byte
    # seeds, so a pad seen in clear by the server would share them with the vote.
    blobs = [(kind, node, mtype, bytes(a.data)) for kind, node, mtype, content in grid.seen
             for rec in content.array_records.values() for a in rec.values()]
    bundle = next(records.get(c, "bundle", messages.CircuitBundle) for kind, n, t, c in grid.seen
                  if kind == "from" and t == "query.setup" and "bundle" in c.config_records)
    first_body = bundle.pad_layout["first_body"]
    votes = [records.get(c, "vote", messages.EncryptedVote) for kind, n, t, c in grid.seen
             if kind == "from" and t == "query.vote"]
    assert len(votes) == N * (Q // B)
    for vote in votes:
        seed = vote.data[first_body - 16:first_body]
        holders = [blob for kind, node, mtype, blob in blobs if seed in blob]
        assert len(holders) == 1, "a pad's seed reached the server outside its vote"
    # control: an opened pad does carry the seed (so the check above can fail)
    sealed = next(records.get(c, "pad", messages.Pad) for kind, n, t, c in grid.seen
                  if kind == "to" and t == "query.vote")
    opened = open_pad(sealed, HolderPadKey(fed_home / f"holder-{sealed.holder_id}").private_key())
    vote = next(v for v in votes if v.pad_id == sealed.pad_id)
    assert opened.data[first_body - 16:first_body] == vote.data[first_body - 16:first_body]


@pytest.mark.slow
def test_fake_grid_encode_mode_ships_keys_to_holders_with_same_labels(fed_home, cache_dir, reference):
    config = job_config("fake-encode", pad_mode="encode")
    summary, labels, grid, lines = run_fake(fed_home, cache_dir, config, run_id=16)
    assert summary["status"] == "completed", summary["reason"]
    assert summary["pad_mode"] == "encode" and labels == reference
    to_holders = holder_setups(grid)
    assert len(to_holders) == N and all("keys" in c.config_records for c in to_holders)
    keys = records.get(to_holders[0], "keys", messages.EvaluationKeys)
    assert all(summary["bytes"][f"holder-{i}"]["bytes_sent_to"] > len(keys.data) for i in range(N))
    # a later seeded job on the same holders does not use (or resend) the keys
    summary2, labels2, grid2, _ = run_fake(fed_home, cache_dir, job_config("fake-seeded-after-encode", pad_mode="seeded"),
                                           run_id=17)
    assert summary2["status"] == "completed" and labels2 == reference
    assert not any("keys" in c.config_records for kind, n, t, c in grid2.seen if kind == "to")


@pytest.mark.slow
def test_fake_grid_shared_pads_same_labels_eight_bytes_and_no_share_in_clear(fed_home, cache_dir, reference):
    config = job_config("fake-shared", pad_mode="shared")
    summary, labels, grid, _ = run_fake(fed_home, cache_dir, config, run_id=18)
    assert summary["status"] == "completed", summary["reason"]
    assert summary["pad_mode"] == "shared" and labels == reference
    to_holders = holder_setups(grid)
    assert len(to_holders) == N and not any("keys" in c.config_records for c in to_holders)
    votes = [records.get(c, "vote", messages.EncryptedVote) for kind, n, t, c in grid.seen
             if kind == "from" and t == "query.vote"]
    assert len(votes) == N * (Q // B) and all(len(v.data) == 8 * B * K for v in votes)  # 8 bytes per value
    shells = [records.get(c, "shell", messages.PadShell) for kind, n, t, c in grid.seen
              if kind == "from" and "shell" in c.config_records]
    assert sorted(s.batch_id for s in shells) == list(range(Q // B))  # one shell per batch, from the owner
    # no share in clear at the server: each reached it sealed, and only its holder's vote carries it
    blobs = server_blobs(grid)
    sealed = [records.get(c, "pad", messages.Pad) for kind, n, t, c in grid.seen if kind == "to" and t == "query.vote"]
    assert len(sealed) == len(votes)
    bundle = next(records.get(c, "bundle", messages.CircuitBundle) for kind, n, t, c in grid.seen
                  if kind == "from" and t == "query.setup" and "bundle" in c.config_records)
    delta_log2 = int(bundle.pad_layout["delta_log2"])
    for pad in sealed:
        opened = open_pad(pad, HolderPadKey(fed_home / f"holder-{pad.holder_id}").private_key())
        assert not any(opened.data in blob for blob in blobs), "a share reached the server in clear"
        # control: the share is what the vote was made from (vote − share = Δ·v), so seeing it would reveal v
        vote = next(v for v in votes if v.pad_id == pad.pad_id)
        delta_v = np.frombuffer(vote.data, np.uint64) - np.frombuffer(opened.data, np.uint64)
        v = delta_v.view(np.int64) >> delta_log2
        assert np.array_equal(v.astype(np.uint64) << np.uint64(delta_log2), delta_v) and np.abs(v).max() < 2**10
    assert not list((fed_home / "owner" / "jobs" / config.effective_job_id / "shares").glob("*"))  # shares deleted


def test_holder_without_keys_only_for_seeded_pads(tmp_path):
    from speed.crypto.runtime import digest
    from speed.deploy.holder_node import HolderNode, connect_holder
    from speed.holder import DataHolder

    bundle = messages.CircuitBundle(spec={}, program=b"p", program_id=digest(b"p"), pad_mode="encode")
    with pytest.raises(InputError, match="needs the evaluation keys"):
        connect_holder(DataHolder(0, lambda q: q, 0.5), bundle, None, "k")
    node = NodeConfig.from_node_config({"role": "holder", "partition-id": 0, "state-dir": str(tmp_path)})
    holder = HolderNode(job_config("x"), node)  # shared-pad job (the default)
    with pytest.raises(InputError, match="pad mode 'encode'"):
        holder.setup({}, "k", [0], bundle, None)
    with pytest.raises(InputError, match="no circuit bundle"):
        holder.setup({}, "k", [0])
    assert holder.cached_keysets() == []


def _answering_reference(table, config, holders_answering, spec, per_batch=None):
    """Clear noisy argmax of the answering holders only (stand-ins add zero), batch by batch, with the
    job's noise mechanism; ``per_batch[b]``: the holders that answered batch b (default: all of
    ``holders_answering``)."""
    from speed.holder.holder import DataHolder, one_hot_votes
    from speed.privacy.noise import holder_generators

    rngs = holder_generators(config.seed, N)
    out = {}
    holders = {i: DataHolder(i, lambda q: q, rng=rngs[i], noise=config.noise_mechanism()) for i in holders_answering}
    for h in holders.values():
        h.spec = spec
    for b, start in enumerate(range(0, Q, B)):
        ids = list(range(start, min(start + B, Q)))
        answering = holders_answering if per_batch is None else per_batch[b]
        total = sum(holders[i].noisy_votes(one_hot_votes(table[ids, i], K))[: len(ids)] for i in answering)
        out.update({q: int(v) for q, v in zip(ids, reference_argmax(total))})
    return out


def _check_publishable_ledger(home, config, taus):
    """The ledger holds the plan first, then one PLD charge per query with the τ its batch really had, and
    its ε is ``epsilon_for_queries`` of those τ."""
    from speed.privacy.ledger import PrivacyLedger
    from speed.privacy.pld import epsilon_for_queries

    noise = config.noise_mechanism()
    recs = ledger_records(home, config.effective_job_id)
    assert recs[0]["kind"] == "plan" and recs[0]["planned_queries"] == Q and recs[0]["noise"] == noise.to_dict()
    charges = recs[1:]
    assert [r["kind"] for r in charges] == ["charge"] * Q
    assert [r["tau_effective"] for r in charges] == pytest.approx(taus, abs=1e-12)
    expected = epsilon_for_queries(noise, taus, config.delta)
    ledger = PrivacyLedger(home / "owner" / "jobs" / config.effective_job_id / "ledger.jsonl", delta=config.delta,
                           read_only=True)
    assert ledger.epsilon()["epsilon"] == pytest.approx(expected, rel=1e-9)
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("pad_mode", ["seeded", "shared"])
def test_fake_grid_silent_holder_gets_stand_in_and_reduced_tau(fed_home, cache_dir, table, pad_mode):
    config = job_config(f"fake-fill-{pad_mode}", min_holders=2, pad_mode=pad_mode)
    summary, labels, grid, lines = run_fake(fed_home, cache_dir, config, run_id=12 if pad_mode == "seeded" else 19,
                                            silent_from={3: 2})  # holder 2
    assert summary["status"] == "completed", summary["reason"]
    assert [b["missing"] for b in summary["batches"]] == [[2], [2]]  # dropped for the rest of the run
    assert "2" in summary["holders_dropped"]
    expected = _answering_reference(table, config, [0, 1], config.circuit_spec(K))
    assert labels == expected
    recs = ledger_records(fed_home, config.effective_job_id)
    assert [r["num_holders"] for r in recs] == [2] * Q
    assert all(abs(r["tau_effective"] - 2 / 3) < 1e-12 and r["expected_holders"] == N for r in recs)
    fillers = (fed_home / "owner" / "jobs" / config.effective_job_id / "fillers.jsonl").read_text().splitlines()
    assert len(fillers) == Q // B
    assert any("stand-in" in line for line in lines)
    if pad_mode == "shared":  # holder 2 got its shares (sealed); the owner never revealed them to the server
        blobs = server_blobs(grid)
        shares = [open_pad(records.get(c, "pad", messages.Pad), HolderPadKey(fed_home / "holder-2").private_key())
                  for kind, n, t, c in grid.seen if kind == "to" and t == "query.vote" and n == 103]
        assert len(shares) == 1 and not any(p.data in blob for p in shares for blob in blobs)  # batch 0 only
        assert sum(kind == "from" and t == "query.fill" and "shell" in c.config_records
                   for kind, n, t, c in grid.seen) == Q // B  # each batch's replacement shell


@pytest.mark.slow
def test_fake_grid_skellam_dropout_charges_pld_epsilon_of_the_real_taus(fed_home, cache_dir, table):
    """Skellam noise (the default mechanism): holder 1 answers batch 0 only, the owner's ledger writes the
    plan first and charges the publishable PLD ε with τ = 1 for batch 0 and τ_eff = 2/3 for batch 1."""
    config = job_config("fake-skellam", mechanism="skellam", sigma=2.0, min_holders=2).resolved()
    summary, labels, grid, lines = run_fake(fed_home, cache_dir, config, run_id=31, silent_from={2: 3})  # holder 1
    assert summary["status"] == "completed", summary["reason"]
    assert [b["missing"] for b in summary["batches"]] == [[], [1]]
    expected = _answering_reference(table, config, [0, 1, 2], config.circuit_spec(K), per_batch=[[0, 1, 2], [0, 2]])
    assert labels == expected
    eps = _check_publishable_ledger(fed_home, config, [1.0] * B + [2 / 3] * (Q - B))
    owner = summary["owner"]
    assert owner["epsilon"] == pytest.approx(eps, rel=1e-9) and owner["epsilon_publishable"]
    assert owner["mechanism"] == {"mechanism": "skellam", "sigma": 2.0} and owner["tau"] == 1.0
    assert any("noise: {'mechanism': 'skellam'" in line for line in lines)


@pytest.mark.slow
def test_fake_grid_strict_job_stops_then_rerun_resumes_with_same_labels(fed_home, cache_dir, reference):
    config = job_config("fake-resume")  # min-holders = N: any missing holder stops the job
    summary, labels, grid, lines = run_fake(fed_home, cache_dir, config, run_id=13, silent_from={2: 3})  # holder 1
    assert summary["status"] == "stopped"
    assert "min-holders is 3" in summary["reason"] and "rerun the same job to resume" in summary["reason"]
    assert labels == {q: reference[q] for q in range(B)}  # batch 0 kept
    assert sorted(r["query_id"] for r in ledger_records(fed_home, config.effective_job_id)) == list(range(B))
    summary2, labels2, grid2, lines2 = run_fake(fed_home, cache_dir, config, run_id=14)
    assert summary2["status"] == "completed", summary2["reason"]
    assert [b["batch_id"] for b in summary2["batches"]] == [1]  # only what was left
    assert labels2 == reference  # seeded noise burnt for batch 0: same as one uninterrupted run
    recs = ledger_records(fed_home, config.effective_job_id)
    assert sorted(r["query_id"] for r in recs) == list(range(Q)) and all(r["num_holders"] == N for r in recs)
    # a third run has nothing to do and changes nothing
    summary3, labels3, _, lines3 = run_fake(fed_home, cache_dir, config, run_id=15)
    assert summary3["status"] == "completed" and labels3 == reference and summary3["batches"] == []
    assert len(ledger_records(fed_home, config.effective_job_id)) == Q


# ----------------------------------------------------------- real processes on loopback
def _local(fed_home, cache_dir, config, **kw):
    from speed.deploy.local import LocalOptions, run_local

    lines: list[str] = []
    options = LocalOptions(config=config, workdir=fed_home, cache_dir=cache_dir,
                           teacher_table=fed_home / "table.npy", timeout=900, on_line=lines.append, **kw)
    result = run_local(options)
    return result, lines


def _no_process_left(result, fed_home):
    assert result["processes"]["left_running"] == []
    assert processes_with_token(result["processes"]["token"]) == []
    mine = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if result["run_dir"].encode() in cmd:
                mine.append(int(entry.name))
    assert mine == []


@pytest.mark.slow
def test_local_federation_labels_equal_in_process_run(fed_home, cache_dir, reference):
    config = job_config("local-full", vote_timeout=120.0, node_wait=120.0, poll_interval=0.5)
    result, lines = _local(fed_home, cache_dir, config)
    assert result["status"] == "completed", (result["reason"], lines)
    assert {int(q): v for q, v in result["labels"].items()} == reference
    assert result["labels_received"] == Q and result["tls"] and result["node_auth"]
    assert result["epsilon"] > 0 and result["bytes"]["owner"]["bytes_received_from"] > 0
    assert any("registered" in line for line in lines)
    _no_process_left(result, fed_home)


@pytest.mark.slow
def test_local_federation_survives_a_killed_holder(fed_home, cache_dir, table):
    """Skellam noise (σ given) on real processes: the mechanism's dict travels in the run config, holder 1
    is SIGKILLed after batch 0, the ledger charges the PLD ε of τ = 1 then τ_eff = 2/3."""
    config = job_config("local-kill", mechanism="skellam", sigma=2.0, min_holders=2, vote_timeout=25.0,
                        node_wait=120.0, poll_interval=0.5)
    result, lines = _local(fed_home, cache_dir, config, kill_holder=1, kill_after=1)
    assert result["status"] == "completed", (result["reason"], lines)
    assert any("fault injection" in line for line in lines)
    assert result["batches"][0]["missing"] == [] and result["batches"][1]["missing"] == [1]
    labels = {int(q): v for q, v in result["labels"].items()}
    config = config.resolved()
    assert labels == _answering_reference(table, config, [0, 1, 2], config.circuit_spec(K),
                                          per_batch=[[0, 1, 2], [0, 2]])
    recs = ledger_records(fed_home, config.effective_job_id)[1:]  # after the plan
    assert [r["num_holders"] for r in recs] == [N, N, N - 1, N - 1]
    eps = _check_publishable_ledger(fed_home, config, [1.0] * B + [2 / 3] * (Q - B))
    assert list(result)[:4] == ["epsilon", "delta", "delta_total", "mechanism"]  # the publishable ε first
    assert result["epsilon"] == pytest.approx(eps, rel=1e-9) and result["mechanism"]["sigma"] == 2.0
    assert result["tau"] == 1.0 and result["tau_effective_values"] == pytest.approx([2 / 3, 1.0])
    _no_process_left(result, fed_home)


# ------------------------------------------------------------- Flower's simulation engine
def test_simulated_partitions_map_to_holders_and_owner(tmp_path):
    from speed.deploy.config import simulated_node_config

    run = {"simulation-dir": str(tmp_path), "simulation-cache-dir": "/c", "simulation-teacher-table": "/t.npy"}
    holder = NodeConfig.from_context({"partition-id": 2, "num-partitions": 4}, run)
    assert (holder.role, holder.partition_id, holder.state_dir) == ("holder", 2, tmp_path / "holder-2")
    assert (str(holder.cache_dir), holder.teacher_table) == ("/c", "/t.npy")
    owner = NodeConfig.from_context({"partition-id": 3, "num-partitions": 4}, run)
    assert (owner.role, owner.state_dir, owner.holder_keys) == ("owner", tmp_path / "owner", "")
    (tmp_path / "holder-keys").mkdir()
    assert NodeConfig.from_context({"partition-id": 3, "num-partitions": 4}, run).holder_keys == str(
        tmp_path / "holder-keys")
    # a node that states its role is never remapped; without simulation-dir nothing is mapped
    stated = NodeConfig.from_context({"role": "holder", "partition-id": 0, "num-partitions": 4}, run)
    assert stated.state_dir != tmp_path / "holder-0"
    with pytest.raises(InputError, match="role"):
        NodeConfig.from_context({"partition-id": 0, "num-partitions": 4}, {})
    with pytest.raises(InputError, match="partition-id 5"):
        simulated_node_config(5, 4, tmp_path)
    with pytest.raises(InputError, match="N \\+ 1"):
        simulated_node_config(0, 2, tmp_path)  # one holder only


def test_simulate_without_ray_is_a_one_line_error(monkeypatch, tmp_path, capsys):
    import speed.deploy.simulation as simulation
    from speed.cli.main import main

    monkeypatch.setattr(simulation, "ray_available", lambda: False)
    with pytest.raises(InputError, match="needs ray"):
        simulation.run_simulation(simulation.SimulationOptions(config=job_config("no-ray"), workdir=tmp_path))
    assert main(["deploy", "simulate", "--holders", "3", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pip install 'speed[simulation]'" in err[0]


@pytest.mark.slow
def test_simulation_engine_labels_equal_in_process_run(fed_home, cache_dir, reference):
    pytest.importorskip("ray", reason="Flower's simulation engine needs ray: pip install 'speed[simulation]'")
    from speed.deploy.simulation import SimulationOptions, run_simulation

    config = job_config("simulated", vote_timeout=300.0, node_wait=60.0, poll_interval=0.1)
    lines: list[str] = []
    result = run_simulation(SimulationOptions(config=config, workdir=fed_home, cache_dir=cache_dir,
                                              teacher_table=fed_home / "table.npy", timeout=900,
                                              on_line=lines.append))
    assert result["status"] == "completed", (result["reason"], lines)
    assert {int(q): v for q, v in result["labels"].items()} == reference
    assert result["labels_received"] == Q and result["epsilon"] > 0
    assert any("--simulation" in line for line in lines)
    assert result["simulation"]["virtual_supernodes"] == N + 1
    assert result["simulation"]["memory"]["peak_pss_bytes"] > 0
    assert sorted(result["bytes"]) == ["holder-0", "holder-1", "holder-2", "owner", "server"]
    _no_process_left(result, fed_home)
