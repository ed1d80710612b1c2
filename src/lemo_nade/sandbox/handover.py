"""Reading what a sandboxed child left in its working directory, without trusting it.

The child may have put anything at a name the run process expects: a symbolic link (to
the run store, to a file of the user's), a FIFO (an ``open`` that would block forever), a
device, a directory, a file grown to the disk's size, or a second hard link to a file
elsewhere. Every read here opens the name itself (``O_NOFOLLOW``: a link is refused, not
followed; ``O_NONBLOCK``: a FIFO does not block), then checks the *opened* file with
``fstat`` (a regular file, one link, at most ``max_bytes``), so a name swapped between
the check and the read changes nothing. A directory is entered through a descriptor
opened the same way (:func:`opened_dir`), so no path component is followed either.

Anything refused reads as ``None`` (or ``False``): the caller treats it as missing.
Main-process side, pure: no torch import.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lemo_nade.files import atomic_file

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = _READ_FLAGS | getattr(os, "O_DIRECTORY", 0)
_CHUNK_BYTES = 1 << 20


@contextlib.contextmanager
def opened_regular(
    path: Path | str, max_bytes: int, dir_fd: int | None = None
) -> Iterator[BinaryIO | None]:
    """The file at ``path`` (relative to ``dir_fd`` when given) opened for reading, or
    None when it is missing, a link, not a regular file, hard-linked elsewhere, or larger
    than ``max_bytes``."""
    try:
        fd = os.open(path, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:  # missing, a link (ELOOP), a directory we may not read, ...
        yield None
        return
    try:
        info = os.fstat(fd)
        ok = stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and info.st_size <= max_bytes
    except OSError:
        ok = False
    if not ok:  # checked before wrapping: a directory's descriptor cannot become a file
        os.close(fd)
        yield None
        return
    with os.fdopen(fd, "rb") as f:
        yield f


def read_regular(path: Path | str, max_bytes: int, dir_fd: int | None = None) -> bytes | None:
    """The bytes of the regular file at ``path``, or None (see :func:`opened_regular`). A
    file that grows past ``max_bytes`` while being read is refused too."""
    with opened_regular(path, max_bytes, dir_fd) as f:
        if f is None:
            return None
        data = f.read(max_bytes + 1)
        return data if len(data) <= max_bytes else None


def copy_regular(path: Path | str, dest: Path, max_bytes: int, dir_fd: int | None = None) -> bool:
    """Copy the regular file at ``path`` to ``dest`` (written atomically by this process,
    streamed: a checkpoint is not held in memory); False, and ``dest`` untouched, when
    the source is refused (see :func:`opened_regular`) or grows past ``max_bytes``."""
    with opened_regular(path, max_bytes, dir_fd) as src:
        if src is None:
            return False
        try:
            with atomic_file(dest, fsync=False) as out:
                copied = 0
                while chunk := src.read(_CHUNK_BYTES):
                    copied += len(chunk)
                    if copied > max_bytes:
                        raise _TooLarge
                    out.write(chunk)
        except _TooLarge:
            return False
        return True


@contextlib.contextmanager
def opened_dir(path: Path | str, dir_fd: int | None = None) -> Iterator[int | None]:
    """A descriptor of the directory at ``path`` (not followed if it is a link), for the
    ``dir_fd`` of the functions above; None when it is missing or not a directory."""
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


class _TooLarge(Exception):
    """The source grew past its cap while being copied."""
