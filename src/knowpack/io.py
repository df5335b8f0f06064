"""Atomic file writes and JSON Lines helpers.

Every output is written to a temporary file in the same directory and then renamed over the
target, so a killed process leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def dumps(obj: Any) -> str:
    """Stable JSON: sorted keys are not used (field order is meaningful), but floats and unicode are."""
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    return write_text(path, "".join(dumps(r) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: Any, *, sync: bool = True) -> None:
    """Append one line and (unless `sync` is False) fsync it; a reader must tolerate (and drop) a torn
    last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (dumps(row) + "\n").encode("utf-8")
    with open(path, "ab") as fh:
        fh.write(line)
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | os.PathLike, *, drop_torn_tail: bool = False) -> list[Any]:
    """Read trusted JSONL written by knowpack itself (user files go through the fact loaders).

    `drop_torn_tail`: a log appended without fsync may end in a partial line (or NUL bytes) after a
    crash; such a last line is dropped instead of raising. Any other bad line still raises.
    """
    rows = []
    with open(path, encoding="utf-8", errors="replace" if drop_torn_tail else "strict") as fh:
        lines = [line for line in fh if line.strip("\x00 \t\r\n")]
    for n, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if drop_torn_tail and n == len(lines) - 1:
                break
            raise
    return rows
