"""speed.fsutil: atomic writes, fsync-ed appends and the one JSON-lines corruption policy."""

from __future__ import annotations

import json
import os
import stat
import warnings

import numpy as np
import pytest

from speed import fsutil
from speed.errors import SpeedError
from speed.fsutil import (Closeable, FileRepairWarning, append_jsonl, atomic_create_bytes, atomic_path, atomic_write,
                          atomic_write_bytes, atomic_write_json, read_jsonl, temp_files)


def _temps(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp") or ".tmp." in p.name]


def test_atomic_write_replaces_and_sets_mode(tmp_path):
    target = tmp_path / "sub" / "key.bin"
    atomic_write_bytes(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write_bytes(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert _temps(target.parent) == []


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert _temps(tmp_path) == []


def test_atomic_path_for_writers_that_want_a_name(tmp_path):
    target = tmp_path / "votes.npz"
    with atomic_path(target, suffix=".npz", mode=0o600) as tmp:
        assert tmp.name.endswith(".npz") and tmp.parent == tmp_path
        np.savez(tmp, x=np.arange(3))
    with np.load(target) as kept:
        assert kept["x"].tolist() == [0, 1, 2]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _temps(tmp_path) == []


def test_unique_temp_names(tmp_path):
    target = tmp_path / "x"
    with atomic_write(target) as a, atomic_write(tmp_path / "x") as b:
        assert a.name != b.name
        a.write(b"a")
        b.write(b"b")
    assert target.read_bytes() in (b"a", b"b")


def test_append_and_read_back(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, [{"q": 1}, {"q": 2}])
    append_jsonl(path, [])
    append_jsonl(path, [{"q": 3}])
    assert [r["q"] for r in read_jsonl(path)] == [1, 2, 3]
    with pytest.raises(SpeedError, match="does not exist"):
        read_jsonl(tmp_path / "none.jsonl", missing_ok=False)


def test_corrupt_middle_line_is_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"q":1}\n{"q":\n{"q":3}\n')
    with pytest.raises(SpeedError, match=r"fillers .*line 2 is not JSON"):
        read_jsonl(path, what="fillers")
    path.write_bytes(b'{"q":1}\n[1, 2]\n')
    with pytest.raises(SpeedError, match="line 2 is not a JSON object"):
        read_jsonl(path)


def test_torn_tail_read_only_is_left_alone(tmp_path):
    path = tmp_path / "log.jsonl"
    raw = b'{"q":1}\n{"q":2'
    path.write_bytes(raw)
    with pytest.warns(FileRepairWarning, match="torn last line"):
        assert read_jsonl(path) == [{"q": 1}]
    assert path.read_bytes() == raw


def test_torn_tail_repaired_then_appends_continue(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"q":1}\n{"q":2')
    with pytest.warns(FileRepairWarning, match="^repaired:"):
        assert read_jsonl(path, repair=True) == [{"q": 1}]
    append_jsonl(path, [{"q": 2}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"q": 1}, {"q": 2}]


def test_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"q":1}\n{"q":2}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path, repair=True) == [{"q": 1}, {"q": 2}]
    assert path.read_bytes().endswith(b"}\n")
    append_jsonl(path, [{"q": 3}])
    assert len(read_jsonl(path)) == 3


def test_append_mode_for_new_file(tmp_path):
    path = tmp_path / "secret.jsonl"
    old = os.umask(0)
    try:
        append_jsonl(path, [{"a": 1}], mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_atomic_create_first_writer_wins(tmp_path):
    key = tmp_path / "state" / "pad-key.pem"
    assert atomic_create_bytes(key, b"first", mode=0o600) is True
    assert atomic_create_bytes(key, b"second", mode=0o600) is False
    assert key.read_bytes() == b"first"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _temps(key.parent) == []


def test_temp_files_are_only_those_of_the_file(tmp_path):
    target = tmp_path / "j.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_write(target):  # a writer killed mid-write leaves no temp file ...
            raise RuntimeError
    assert temp_files(target) == []
    left = tmp_path / ".j.jsonl.ab_12xyz.tmp"  # ... a SIGKILL-ed one does
    left.touch()
    for other in (".j.jsonl.head.ab_12xyz.tmp", ".j.jsonl.bak.ab_12xyz.tmp", ".j.jsonl.ab_12xyz.tmp.npz", "j.jsonl"):
        (tmp_path / other).touch()
    assert temp_files(target) == [left]
    assert temp_files(tmp_path / "j.jsonl.head") == [tmp_path / ".j.jsonl.head.ab_12xyz.tmp"]
    assert temp_files(target, suffix=".npz") == [tmp_path / ".j.jsonl.ab_12xyz.tmp.npz"]
    assert temp_files(tmp_path / "missing" / "x") == []
    with atomic_write(target):  # the name atomic_write really uses matches
        assert len(temp_files(target)) == 2
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp in temp_files(target, suffix=".npz")


def test_closeable_closes_on_exit():
    class Handle(Closeable):
        closed = 0

        def close(self):
            self.closed += 1

    with Handle() as h:
        assert isinstance(h, Handle) and h.closed == 0
    assert h.closed == 1


# ----------------------------------------------------------------------------- the package's writers
@pytest.fixture()
def umask_zero():
    """Modes must come from the writers, not from the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def _fail_replace(monkeypatch):
    """Make every atomic replace fail after its temporary file is written (a full disk, a kill)."""
    def boom(*args, **kw):
        raise OSError("simulated failure")

    monkeypatch.setattr("speed.fsutil.os.replace", boom)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_holder_pad_key_is_private_whole_and_first_writer_wins(tmp_path, umask_zero, monkeypatch):
    from speed.deploy.sealing import HolderPadKey

    key = HolderPadKey(tmp_path / "holder-0")
    first = key.public_hex()
    assert _mode(key.path) == 0o600 and _temps(key.path.parent) == []
    assert HolderPadKey(tmp_path / "holder-0").public_hex() == first
    # a racing process that also saw no key file: its key is discarded, the first one is used
    monkeypatch.setattr(type(key.path), "is_file", lambda self: False)
    assert key.public_hex() == first
    assert _temps(key.path.parent) == []


def test_tofu_file_format_and_failed_write_keeps_it(tmp_path, monkeypatch):
    from speed.deploy.sealing import PinnedHolderKeys

    tofu = PinnedHolderKeys(tmp_path / "owner")
    tofu.check({1: "AA" * 32})
    before = tofu.tofu_path.read_text()
    assert before == json.dumps({"1": "aa" * 32}, indent=1, sort_keys=True)
    _fail_replace(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        tofu.check({2: "bb" * 32})
    assert tofu.tofu_path.read_text() == before and _temps(tofu.tofu_path.parent) == []


def test_tls_private_keys_0600_certificates_0644(tmp_path, umask_zero):
    from speed.deploy.tls import make_certificates, make_node_key

    (tmp_path / "server.key").write_bytes(b"old key, world-readable")  # replaced, not rewritten in place
    c = make_certificates(tmp_path)
    k = make_node_key(tmp_path, "hospital-3")
    assert {p.name: oct(_mode(p)) for p in (c.ca_cert, c.server_cert, c.server_key, k.private_key, k.public_key)} == {
        "ca.crt": "0o644", "server.pem": "0o644", "server.key": "0o600",
        "hospital-3.key": "0o600", "hospital-3.pub": "0o644"}
    assert c.server_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _temps(tmp_path) == []


def test_holder_keyset_store_is_usable_only_once_complete(tmp_path, monkeypatch):
    from speed import messages
    from speed.crypto.runtime import digest
    from speed.deploy.config import DeployConfig, NodeConfig
    from speed.deploy.holder_node import HolderNode

    config = DeployConfig(task="table", holders=3, classes=3, queries=4, batch_size=2, mechanism="lattice",
                          gamma=2.0, job_id="x")
    node = NodeConfig.from_node_config({"role": "holder", "partition-id": 0, "state-dir": str(tmp_path)})
    holder = HolderNode(config, node)
    bundle = messages.CircuitBundle(spec={"num_holders": 3}, program=b"program", program_id=digest(b"program"),
                                    pad_mode=config.pad_mode)
    with monkeypatch.context() as m:
        _fail_replace(m)
        with pytest.raises(OSError, match="simulated"):
            holder._store("k1", bundle, None)
    assert holder.cached_keysets() == [] and _temps(tmp_path / "keysets" / "k1") == []
    holder._store("k1", bundle, None)
    assert holder.cached_keysets() == ["k1"]
    assert holder._load("k1")[0].program == b"program"


def test_launcher_files(tmp_path):
    from speed.deploy.config import DeployConfig
    from speed.deploy.launcher import launch
    from speed.errors import SpeedError

    config = DeployConfig(task="table", holders=2, classes=3, queries=4, batch_size=2, mechanism="lattice",
                          gamma=2.0, job_id="x")

    def body(session):
        session.connect("local", 1234, tmp_path / "ca.crt")
        session.pin_holder_keys(session.run_dir / "pins")
        raise SpeedError("no Flower in this test")

    result = launch(config, tmp_path / "work", tmp_path / "cache", "-t", lambda line: None, body, node_auth=False)
    assert result["status"] == "failed" and result["reason"] == "no Flower in this test"
    (run_dir,) = (tmp_path / "work" / "runs").iterdir()
    assert (run_dir / "flwr-home" / "config.toml").read_text() == (
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:1234"\n'
        f'root-certificates = "{tmp_path / "ca.crt"}"\n')
    assert sorted(p.name for p in (run_dir / "pins").iterdir()) == ["holder-0.pub", "holder-1.pub"]
    assert json.loads((run_dir / "summary.json").read_text()) == result
    assert not (run_dir / "summary.json").read_text().endswith("\n")  # format unchanged
    for directory in (run_dir, run_dir / "pins", run_dir / "flwr-home"):
        assert _temps(directory) == []


def test_stage_cache_and_feature_cache_failed_writes_keep_the_old_file(tmp_path, monkeypatch):
    from speed.learning.features import load_feature_cache, save_feature_cache
    from speed.reproduce.store import StageCache, atomic_write_text

    assert atomic_write_text is fsutil.atomic_write_text  # speed.reproduce.report imports it from the store
    cache = StageCache(tmp_path / "stages.json", "k")
    cache.put("teachers", {"acc": 0.5})
    npz = tmp_path / "features" / "f.npz"
    save_feature_cache(npz, {"train": np.ones((2, 3), np.float32)}, {"key": "k"})
    assert _temps(tmp_path) == [] and _temps(npz.parent) == []
    with monkeypatch.context() as m:
        _fail_replace(m)
        with pytest.raises(OSError, match="simulated"):
            cache.put("students", {"acc": 0.9})
        with pytest.raises(OSError, match="simulated"):
            save_feature_cache(npz, {"train": np.zeros((2, 3), np.float32)}, {"key": "k"})
    assert StageCache(tmp_path / "stages.json", "k").data == {"teachers": {"acc": 0.5}}
    assert load_feature_cache(npz, expected_key="k")[0]["train"].tolist() == [[1.0] * 3] * 2
    assert _temps(tmp_path) == [] and _temps(npz.parent) == []


def test_batched_checkpoint_and_bench_results(tmp_path, monkeypatch, capsys):
    import torch

    from speed.bench.results import save_result
    from speed.learning.batched import _atomic_save

    ck = tmp_path / "ck" / "heads.pt"
    _atomic_save(ck, {"step": 1})
    with monkeypatch.context() as m:
        _fail_replace(m)
        with pytest.raises(OSError, match="simulated"):
            _atomic_save(ck, {"step": 2})
    assert torch.load(ck) == {"step": 1} and _temps(ck.parent) == []
    path = save_result(tmp_path / "results", "bench", {"a": 1}, ["| a |", "| 1 |"])
    assert path.read_text() == json.dumps({"a": 1}, indent=2)
    assert path.with_suffix(".md").read_text() == "| a |\n| 1 |\n"
    assert _temps(path.parent) == []


def test_server_program_is_cached_atomically(tmp_path, small_spec):
    from concrete import fhe

    from speed.crypto.circuit import server_program_path

    path = server_program_path(small_spec, tmp_path)
    assert path.name == "server.zip" and _temps(path.parent) == [] and list(path.parent.iterdir()) == [path]
    fhe.Server.load(path)
    assert server_program_path(small_spec, tmp_path) == path  # cached: not compiled again
