"""Atomic files and checksums: the one place the project writes a file or hashes one.

Every file a user keeps (results, banks, policies, unit logs) is written to a uniquely named
temporary sibling, flushed and fsynced, then moved into place with ``os.replace``, so a reader or
a crash sees the previous file or the new one, never a mix. Directories (a bank, an adapter
folder) are built aside and swapped in the same way, the previous one moved aside first and
restored if the swap fails.

Checksums are sha256 hex digests: of a file's bytes, of raw bytes, or of a JSON object's
canonical form (sorted keys, no spaces), so that a manifest can carry its own checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir", "fsync_file",
           "replace_dir",
           "sha256_bytes", "sha256_file", "sha256_json", "temp_dir_beside"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = _read_umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so a rename inside it survives a power loss (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file's contents to disk (before a rename makes it visible)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` for a writer that needs a file name (safetensors,
    SB3's zip); on a clean exit it is fsynced and moved onto ``path``, on an error removed.

    ``suffix`` is the temporary name's ending, for writers that insist on one (``".zip"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a kept file gets the usual mode
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, ``os.replace``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: never half-written."""
    atomic_write_bytes(path, text.encode("utf-8"))


def temp_dir_beside(root: str | os.PathLike, kind: str = "tmp") -> Path:
    """A fresh, uniquely named directory next to ``root`` (``.<name>.<kind>-<pid>-<tag>``)."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def replace_dir(tmp: str | os.PathLike, root: str | os.PathLike,
                keep_old: Callable[[Path], None] | None = None) -> None:
    """Move the finished directory ``tmp`` onto ``root``.

    Every file under ``tmp`` is fsynced first. A previous ``root`` is renamed aside and put back
    if the swap fails; once the new one is in place the old copy is deleted (or handed to
    ``keep_old``, which then owns it).
    """
    tmp, root = Path(tmp), Path(root)
    for part in tmp.rglob("*"):  # the contents reach the disk before the swap makes them visible
        if part.is_file() and not part.is_symlink():
            fsync_file(part)
    fsync_dir(tmp)
    if not root.exists():
        os.replace(tmp, root)
    else:
        old = root.parent / f".{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(root, old)
        try:
            os.replace(tmp, root)
        except BaseException:
            os.replace(old, root)  # roll back: the previous directory goes back in place
            raise
        if keep_old is not None:
            keep_old(old)
        else:
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(root.parent)


def sha256_bytes(data: bytes) -> str:
    """sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes, read in 1 MiB chunks (large files stay cheap)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any, exclude: str | None = None) -> str:
    """sha256 of ``obj``'s canonical JSON (sorted keys, no spaces, non-JSON values as ``str``).

    ``exclude`` drops one top-level key first: a manifest's own checksum field.
    """
    if exclude is not None and isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != exclude}
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode("utf-8"))
