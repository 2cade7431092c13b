"""Files written so that a run killed at any moment leaves the old file or the new one: atomic writes, JSON, sha256."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (an `.mlpackage`): of its files' relative paths and digests, sorted."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def disk_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of all files under a folder."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Calls `write(file_object)` on a temp file beside `path`, then renames it over `path`.

    A run killed part-way leaves either the old file or the new one, never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode any new file gets under the user's umask
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Writes `obj` as JSON (with a final newline) atomically; values JSON cannot hold are written as strings."""
    text = json.dumps(obj, indent=indent, default=str) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def require_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """`path` when it is a file; else an error that says what is there instead and what was expected.

    Args:
        what: what the file should be ("checkpoint", "image"), used in the message.
        hint: appended to the message of a missing file (where to get one).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        article = "an" if what[:1] in "aeiou" else "a"
        raise IsADirectoryError(f"{what} {path} is a directory; give the path of {article} {what} file inside it")
    if path.exists():
        raise FileNotFoundError(f"{what} {path} is not a regular file (a device, socket or fifo)")
    raise FileNotFoundError(f"{what} {path} does not exist" + (f". {hint}" if hint else ""))
