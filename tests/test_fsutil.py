"""speed.fsutil: atomic writes, fsync-ed appends and the one JSON-lines corruption policy."""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import pytest

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
