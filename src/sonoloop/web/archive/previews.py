"""PNG previews of stored frames, cached on disk under the file's key.

A few fixed sizes (``PREVIEW_SIZES``) keep the number of files per frame small; a replaced
or deleted file's previews go with it (``forget``); and the whole cache stays under
``SONOLOOP_PREVIEW_CACHE_MB``: after every ``PRUNE_EVERY`` new previews in a process, the
least recently written ones are removed until it fits.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from django.conf import settings

from sonoloop.dicom.pixels import render_png

log = logging.getLogger("sonoloop.archive")

PREVIEW_SIZES = (128, 160, 256, 512, 768, 1024, 2048)
FULL_SIZE = 4096  # WADO-URI's image/png: the frame as it is (up to this size)
PRUNE_EVERY = 64

_written = 0
_lock = threading.Lock()


def snap(size: int) -> int:
    """The smallest fixed size that holds ``size`` (the largest for anything bigger)."""
    return next((s for s in PREVIEW_SIZES if s >= size), PREVIEW_SIZES[-1])


def _folder() -> Path:
    return settings.CONFIG.cache_dir / "previews"


def preview_png(instance, path: Path, frame: int, size: int) -> bytes:
    """PNG of one frame (1-based) of the instance stored at ``path``, at most ``size`` pixels
    on its long side."""
    global _written
    if size != FULL_SIZE:
        size = snap(size)
    cache = _folder() / instance.file_key[:2]
    target = cache / f"{instance.file_key}-{frame}-{size}.png"
    try:
        return target.read_bytes()
    except FileNotFoundError:
        pass
    png = render_png(path, frame - 1, size)
    cache.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    temp.write_bytes(png)
    os.replace(temp, target)
    with _lock:
        _written += 1
        due = _written % PRUNE_EVERY == 0
    if due:
        prune(settings.CONFIG.preview_cache_mb * 1024 * 1024)
    return png


def forget(file_key: str) -> int:
    """Remove every preview of the file ``file_key`` (replaced or deleted); returns how many."""
    removed = 0
    for png in (_folder() / file_key[:2]).glob(f"{file_key}-*.png"):
        png.unlink(missing_ok=True)
        removed += 1
    return removed


def prune(limit_bytes: int) -> int:
    """Remove the least recently written previews until the cache holds at most
    ``limit_bytes``; returns how many were removed."""
    entries = []
    total = 0
    root = _folder()
    if not root.is_dir():
        return 0
    for sub in os.scandir(root):
        if not sub.is_dir():
            continue
        for entry in os.scandir(sub.path):
            if entry.name.endswith(".png"):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, entry.path))
                total += st.st_size
    removed = 0
    if total <= limit_bytes:
        return 0
    for _, size, path in sorted(entries):
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        total -= size
        removed += 1
        if total <= limit_bytes:
            break
    log.info("preview cache over its limit: removed %d preview(s)", removed)
    return removed
