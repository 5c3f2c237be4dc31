"""Durable file storage under server-generated keys.

A write goes to a temporary file in the same filesystem, is fsynced, renamed into
place and the directory entry fsynced, so after ``put`` returns the bytes survive a
crash.  Keys are random hex; nothing a peer sends ever becomes part of a path.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import time
from pathlib import Path

_KEY_RE = re.compile(r"^[0-9a-f]{32}$")


class StorageFull(OSError):
    """The disk (or quota) is full; the caller answers 'out of resources' (A701 refused: out
    of resources, or ``status``) with the message."""

    status = 0xA701


def new_key() -> str:
    return secrets.token_hex(16)


_WRITER = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    def __init__(self, root: Path, tmp: Path, suffix: str = ".dcm"):
        self.root = Path(root)
        self.tmp = Path(tmp)
        self.suffix = suffix
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[str] = set()

    def path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"not a storage key: {key!r}")
        # 256 folders: created once, after which a write never creates a directory.
        return self.root / key[:2] / f"{key}{self.suffix}"

    def put(self, data: bytes, key: str | None = None) -> str:
        """Store ``data`` durably under ``key`` (a new one if not given) and return the key."""
        key = key or new_key()
        final = self.path(key)
        folder = final.parent
        temp = self.tmp / f"{_WRITER}-{os.getpid()}-{key}.part"
        try:
            if str(folder) not in self._known_dirs:
                created = not folder.exists()
                folder.mkdir(parents=True, exist_ok=True)
                if created:
                    _fsync_dir(folder.parent)
                self._known_dirs.add(str(folder))
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            if os.path.exists(final):
                os.close(fd)
                raise FileExistsError(f"key {key} is already in use")
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
            _fsync_dir(folder)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(exc.errno, "no space left for the instance") from exc
            raise
        return key

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def clean_partials(self, stale_seconds: float = 24 * 3600) -> int:
        """Remove temporary files left by a crash; returns how many were removed. A partial
        file names its writer (host and process id): this host's dead processes' files go
        now; files of live processes and of other machines sharing the folder stay, unless
        older than ``stale_seconds``."""
        removed = 0
        now = time.time()
        for leftover in self.tmp.glob("*.part"):
            try:
                writer, pid = leftover.name.rsplit("-", 2)[:2]
                mine_and_dead = writer == _WRITER and not _alive(int(pid))
                if not mine_and_dead and now - leftover.stat().st_mtime < stale_seconds:
                    continue
            except (ValueError, FileNotFoundError):
                pass  # an older naming, or gone meanwhile
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed
