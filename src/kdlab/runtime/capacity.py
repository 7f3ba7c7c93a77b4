"""What the machine can hold: physical memory, free disk space, sizes in words.

Sizes a user types (scenes to generate, views to cache) are checked against these before any
work starts, so that a typo such as ``1000000000`` is refused with an estimate instead of
running for hours or until the memory is gone.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None


def free_disk(path: str | Path) -> int | None:
    """Bytes free to this user on the file system that holds ``path`` (or would: the nearest
    existing folder above it); None where the system does not say."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (AttributeError, OSError):  # pragma: no cover - no statvfs (Windows)
        return None
    return st.f_bavail * st.f_frsize


def size_text(nbytes: float) -> str:
    """``12.3 MiB``-style size."""
    if nbytes <= 0:
        return "0 B"
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = min(int(math.log(nbytes, 1024)), len(units) - 1)
    return f"{nbytes / 1024 ** i:.1f} {units[i]}" if i else f"{int(nbytes)} B"
