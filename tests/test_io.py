"""Atomic writes: the target is either the old file or the new one, never a partial one."""

from __future__ import annotations

import os
import stat

import pytest

from knowpack.io import append_jsonl, atomic_path, read_jsonl, write_json, write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "out.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    mode = stat.S_IMODE(os.stat(target).st_mode)
    assert mode & 0o044  # readable by others like any ordinary output (mkstemp would give 0600)


def test_failure_inside_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert len(list(tmp_path.iterdir())) == 1


def test_append_jsonl_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"b": "é"})
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]


def test_torn_last_line_of_an_unsynced_log_is_dropped_only_when_asked(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1}, sync=False)
    append_jsonl(path, {"step": 2}, sync=False)
    with open(path, "ab") as fh:
        fh.write(b'{"step": 3, "lo')  # a crash in the middle of a line
    with pytest.raises(ValueError):
        read_jsonl(path)
    assert read_jsonl(path, drop_torn_tail=True) == [{"step": 1}, {"step": 2}]
    with open(path, "ab") as fh:
        fh.write(b"\x00" * 8)  # a file system that extended the file but never wrote the block
    assert read_jsonl(path, drop_torn_tail=True) == [{"step": 1}, {"step": 2}]
    broken_middle = tmp_path / "bad.jsonl"
    broken_middle.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ValueError):
        read_jsonl(broken_middle, drop_torn_tail=True)  # only a torn *last* line is forgiven
