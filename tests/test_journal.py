"""speed.journal: hash chain + head file make lost, cut, edited and reordered records visible."""

from __future__ import annotations

import json
import warnings

import pytest

from speed.errors import SpeedError
from speed.journal import GENESIS, Journal, JournalMissingError, JournalRepairWarning, head_path, record_hash
from speed.journal_cli import main


def _make(path, n=10, **kw):
    with Journal(path, what="test journal", lock=True, **kw) as j:
        for i in range(n):
            j.append({"i": i, "eps": 0.125 * i})
    return path.read_bytes()


def _open(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", JournalRepairWarning)  # a refusal must not be preceded by repairs
        return Journal(path, what="test journal", **kw)


def test_format_chain_and_head(tmp_path):
    path = tmp_path / "j.jsonl"
    data = _make(path, 3)
    recs = [json.loads(line) for line in data.splitlines()]
    assert [r["seq"] for r in recs] == [0, 1, 2]
    assert recs[0]["prev"] == GENESIS
    for a, b in zip(recs, recs[1:]):
        assert b["prev"] == a["sha"]
    for r in recs:
        body = {k: v for k, v in r.items() if k != "sha"}
        assert record_hash(body) == r["sha"]
    head = json.loads(head_path(path).read_text())
    assert head == {"format": "speed-journal-head/1", "count": 3, "last": recs[-1]["sha"], "size": len(data)}
    j = _open(path, read_only=True)
    assert j.records == [{"i": i, "eps": 0.125 * i} for i in range(3)] and j.repairs == []
    with Journal(path, lock=True) as j:  # reopen and continue the chain
        j.append({"i": 3, "eps": 0.375})
    assert len(_open(path, read_only=True)) == 4


def test_cut_in_half_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    data = _make(path, 34)
    path.write_bytes(data[: len(data) // 2])
    for ro in (False, True):
        with pytest.raises(SpeedError, match=r"head records 34 entries, file holds 1[67]: records were lost"):
            _open(path, read_only=ro)
    assert path.read_bytes() == data[: len(data) // 2]  # nothing "repaired"


def test_cut_at_a_line_boundary_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    data = _make(path, 5)
    path.write_bytes(b"".join(data.splitlines(keepends=True)[:4]))  # last record gone, cleanly
    with pytest.raises(SpeedError, match="head records 5 entries, file holds 4"):
        _open(path)
    path.write_bytes(b"")  # emptied
    with pytest.raises(SpeedError, match="head records 5 entries, file holds 0"):
        _open(path)
    path.unlink()  # deleted, head left behind
    for ro in (False, True):
        with pytest.raises(SpeedError, match="the file is missing but j.jsonl.head records 5 entries"):
            _open(path, read_only=ro)
    assert not path.exists()


def test_deleted_line_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    lines = _make(path, 10).splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:4] + lines[5:]))  # sed 5d
    with pytest.raises(SpeedError, match="line 5 holds record seq 5 where seq 4 was expected"):
        _open(path)


def test_reordered_lines_are_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    lines = _make(path, 4).splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], lines[2], lines[1], lines[3]]))
    with pytest.raises(SpeedError, match="line 2 holds record seq 2 where seq 1 was expected"):
        _open(path)


def test_edited_line_is_refused(tmp_path):
    path = tmp_path / "j.jsonl"
    lines = _make(path, 4).splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [lines[2].replace(b'"i":2', b'"i":7')] + lines[3:]))
    with pytest.raises(SpeedError, match="checksum mismatch at line 3"):
        _open(path)
    # a consistently re-hashed edit breaks the chain at the next line
    rec = json.loads(lines[2])
    rec["i"] = 7
    del rec["sha"]
    rec["sha"] = record_hash(rec)
    forged = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines[:2] + [forged] + lines[3:]))
    with pytest.raises(SpeedError, match="line 4 does not chain"):
        _open(path)
    # ... and at the head when it is the last line
    path.write_bytes(b"".join(lines[:2] + [forged]))
    with pytest.raises(SpeedError, match="head records 4 entries, file holds 3"):
        _open(path)
    # reformatting alone is an edit too
    pretty = json.dumps(json.loads(lines[3])).encode() + b"\n"
    path.write_bytes(b"".join(lines[:3] + [pretty]))
    with pytest.raises(SpeedError, match="line 4 is not in canonical form"):
        _open(path)
    path.write_bytes(b"".join(lines[:3] + [b"not json\n"]))
    with pytest.raises(SpeedError, match="corrupted at line 4"):
        _open(path)


def test_valid_unterminated_last_record_is_kept(tmp_path):
    path = tmp_path / "j.jsonl"
    data = _make(path, 5)
    path.write_bytes(data[:-1])  # the final newline is lost, the record is intact
    with pytest.warns(JournalRepairWarning, match="kept record seq 4.*; not repaired \\(opened read-only\\)"):
        ro = Journal(path, read_only=True)  # read-only: counted, not repaired
    assert len(ro) == 5 and path.read_bytes() == data[:-1]
    with pytest.warns(JournalRepairWarning, match=r"repaired: .*kept record seq 4, complete and checksum-valid"):
        j = Journal(path, lock=True)
    assert len(j) == 5 and j.records[-1] == {"i": 4, "eps": 0.5} and j.repaired_bytes == 0
    assert path.read_bytes() == data  # newline added, nothing deleted
    j.append({"i": 5, "eps": 0.625})
    j.close()
    assert len(_open(path)) == 6


def test_valid_unterminated_record_the_head_never_counted_is_kept(tmp_path):
    # the head lagging behind (crash between append and head update) plus a missing newline
    path = tmp_path / "j.jsonl"
    _make(path, 2)
    head = head_path(path).read_bytes()
    data = _make(path, 1)  # appends record 2 (i=0) after the first two
    head_path(path).write_bytes(head)
    path.write_bytes(data[:-1])
    with pytest.warns(JournalRepairWarning) as rec:
        j = Journal(path, lock=True)
    msgs = [str(w.message) for w in rec]
    assert any("kept record seq 2" in m for m in msgs) and any("head counted 2 records" in m for m in msgs)
    assert len(j) == 3 and json.loads(head_path(path).read_text())["count"] == 3
    j.close()


def test_garbage_tail_truncated_only_when_unacknowledged(tmp_path):
    path = tmp_path / "j.jsonl"
    data = _make(path, 5)
    path.write_bytes(data + b'{"eps":0.1,"i":5,"prev":"ab')  # a write torn by a kill
    with pytest.warns(JournalRepairWarning, match="ignoring 27 bytes of a torn write"):
        ro = Journal(path, read_only=True)
    assert len(ro) == 5 and ro.repaired_bytes > 0 and path.read_bytes() != data  # read-only: untouched
    with pytest.warns(JournalRepairWarning, match=r"repaired: .*dropped 27 bytes of a torn write after record 5 "
                                                  r"\(never acknowledged: the head counts 5 records\)"):
        j = Journal(path, lock=True)
    assert len(j) == 5 and path.read_bytes() == data
    j.close()
    # the same torn bytes in place of an acknowledged record: refused, not truncated
    lines = data.splitlines(keepends=True)
    damaged = b"".join(lines[:4]) + lines[4][:30]
    path.write_bytes(damaged)
    with pytest.raises(SpeedError, match="head records 5 entries, file holds 4: records were lost"):
        _open(path)
    assert path.read_bytes() == damaged


def test_head_behind_by_a_crash_is_caught_up(tmp_path):
    path = tmp_path / "j.jsonl"
    _make(path, 3)
    head = head_path(path).read_bytes()
    _make(path, 1)
    head_path(path).write_bytes(head)  # killed after the append's fsync, before its head update
    with pytest.warns(JournalRepairWarning, match="head counted 3 records, file holds 4"):
        Journal(path, lock=True).close()
    assert json.loads(head_path(path).read_text())["count"] == 4


def test_head_missing_or_damaged(tmp_path):
    path = tmp_path / "j.jsonl"
    _make(path, 3)
    good = head_path(path).read_bytes()
    head_path(path).unlink()
    for ro in (False, True):
        with pytest.raises(SpeedError, match=r"head file j.jsonl.head is missing.*python -m speed.journal reseal"):
            _open(path, read_only=ro)
    head_path(path).write_text("{")
    with pytest.raises(SpeedError, match="head file j.jsonl.head is damaged"):
        _open(path)
    head_path(path).write_bytes(good.replace(b'"count": 3', b'"count": 2'))
    with pytest.raises(SpeedError, match="record 2 is not the one the head file names"):
        _open(path)
    # reseal: an explicit statement that the file is complete
    head_path(path).unlink()
    with pytest.warns(JournalRepairWarning, match="resealed"):
        assert main(["reseal", str(path)]) == 0
    assert head_path(path).read_bytes().strip() == good.strip()
    assert main(["verify", str(path)]) == 0
    assert main(["reseal", str(path)]) == 2  # has a head: nothing to reseal


def test_directory_missing_and_second_writer(tmp_path):
    with pytest.raises(SpeedError, match="is a directory, not a file"):
        Journal(tmp_path, read_only=True)
    with pytest.raises(SpeedError, match="is a directory, not a file"):
        Journal(tmp_path)
    with pytest.raises(JournalMissingError, match="does not exist"):
        Journal(tmp_path / "none.jsonl", read_only=True)
    path = tmp_path / "j.jsonl"
    with Journal(path, lock=True) as j:
        with pytest.raises(SpeedError, match="in use by another process"):
            Journal(path, lock=True)
        with pytest.raises(SpeedError, match="read-only"):
            Journal(path, read_only=True).append({"x": 1})
        with pytest.raises(ValueError, match="reserved"):
            j.append({"seq": 1})
        # an unlocked second writer appends behind our back: the next append notices
        with Journal(path) as other:
            other.append({"x": 2})
        with pytest.raises(SpeedError, match="changed on disk since it was opened"):
            j.append({"x": 3})


def test_legacy_file_is_upgraded_once_with_a_warning(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2}\n{"a":3}')  # v1: plain lines, last one unterminated

    def legacy(raw, lineno):
        return json.loads(raw)

    with pytest.warns(JournalRepairWarning, match="legacy format without a hash chain.*not upgraded"):
        ro = Journal(path, read_only=True, legacy=legacy)
    assert [r["a"] for r in ro.records] == [1, 2, 3] and not head_path(path).exists()
    with pytest.warns(JournalRepairWarning, match=r"repaired: .*upgraded from the legacy format .* 3 records"):
        j = Journal(path, lock=True, legacy=legacy)
    j.append({"a": 4})
    j.close()
    assert [r["a"] for r in _open(path, legacy=legacy).records] == [1, 2, 3, 4]
    assert all("sha" in json.loads(line) for line in path.read_text().splitlines())
    # a file in the legacy format that has a head was rewritten after it became a journal
    path.write_bytes(b'{"a":1}\n')
    with pytest.raises(SpeedError, match=r"corrupted at line 1 \(not a journal record: no seq/prev/sha\)"):
        _open(path, legacy=legacy)


def test_owner_node_labels_file_is_a_journal(tmp_path):
    from speed.deploy.owner_node import _append_labels, read_labels

    path = tmp_path / "labels.jsonl"
    assert read_labels(path) == {}
    rows = [{"query_id": q, "label": q % 3, "batch_id": 0} for q in range(4)]
    assert _append_labels(path, rows) == {0: 0, 1: 1, 2: 2, 3: 0}
    assert _append_labels(path, rows[2:] + [{"query_id": 4, "label": 1, "batch_id": 1}])[4] == 1  # no duplicates
    assert len(path.read_text().splitlines()) == 5 and read_labels(path)[4] == 1
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1] + [lines[1].replace('"label":1', '"label":2')] + lines[2:]))
    with pytest.raises(SpeedError, match=r"labels file .*labels.jsonl: checksum mismatch at line 2"):
        read_labels(path)  # an edited label was silently used before
    path.write_text("".join(lines[:-1]))
    with pytest.raises(SpeedError, match="head records 5 entries, file holds 4"):
        read_labels(path)
    # legacy labels file (plain lines): read with a warning, upgraded on the next append
    old = tmp_path / "old.jsonl"
    old.write_text('{"label": 1, "query_id": 0}\n{"label": 2, "query_id": 1}\n')
    with pytest.warns(JournalRepairWarning, match="legacy format"):
        assert read_labels(old) == {0: 1, 1: 2}
    with pytest.warns(JournalRepairWarning, match="upgraded from the legacy format"):
        assert _append_labels(old, [{"query_id": 2, "label": 0}]) == {0: 1, 1: 2, 2: 0}
    assert read_labels(old) == {0: 1, 1: 2, 2: 0}
    old.write_text('{"label": 1, "query_id": 0}\nnot json\n')
    head_path(old).unlink()
    with pytest.raises(SpeedError, match="labels file .*old.jsonl is corrupted at line 2"):
        read_labels(old)


def test_temp_files_of_a_killed_writer_are_cleaned_under_the_lock(tmp_path):
    import stat

    path = tmp_path / "j.jsonl"
    _make(path, 2)
    assert stat.S_IMODE(head_path(path).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.jsonl", "j.jsonl.head"]  # no temp file left
    stale = [tmp_path / ".j.jsonl.head.k1ll3d_x.tmp", tmp_path / ".j.jsonl.k1ll3d_x.tmp"]  # head update, upgrade
    other = tmp_path / ".j.jsonl.bak.k1ll3d_x.tmp"  # another file's writer: not ours to remove
    for p in stale + [other]:
        p.write_bytes(b"half")
    _open(path, read_only=True).close()
    _open(path).close()  # no lock: a writer may be running
    assert all(p.exists() for p in stale)
    _open(path, lock=True).close()
    assert not any(p.exists() for p in stale) and other.exists()


def test_python_dash_m_speed_journal(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "j.jsonl"
    _make(path, 2)
    out = subprocess.run([sys.executable, "-m", "speed.journal", "verify", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: 2 records, chain and head verified"
