"""Writing a file so that a reader sees the old one or the whole new one, never half.

Pure (no torch): used by the main process (store, reports, retrain bookkeeping) and by the
child side (the worker's result, the retrain checkpoint's progress file).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from lemo_nade.numbers import jsonable


def atomic_write(path: Path, data: str | bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file and a rename.

    ``fsync`` makes the new content durable before the rename (a crash leaves the old file
    or the new one); a short-lived file a process reads back at once can skip it. Missing
    parent directories are created. The temporary file gets a fresh random name and is
    created exclusively without following links, so a link planted at a temporary name
    (by a sandboxed child in a directory it may write) is never written through."""
    with atomic_file(path, fsync=fsync) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_file(path: Path, fsync: bool = True) -> Iterator[BinaryIO]:
    """:func:`atomic_write` for a writer that streams (e.g. ``torch.save(state, f)``: a
    checkpoint is not built in memory a second time): the open temporary file, renamed
    to ``path`` when the block ends, removed if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags | getattr(os, "O_CLOEXEC", 0), 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves no hidden half file behind
        raise


def atomic_write_json(path: Path, value: Any, indent: int | None = 2, fsync: bool = True) -> None:
    """:func:`atomic_write` of ``value`` as strict JSON (NaN and infinities become null)."""
    text = json.dumps(jsonable(value), indent=indent, allow_nan=False)
    atomic_write(path, text, fsync=fsync)
