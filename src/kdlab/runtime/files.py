"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader (or a resumed run) sees either the old file or the complete new one, never a
half-written file, even when the process is killed mid-write. The temporary is named
``.NAME.XXXXXXXX.tmp`` (:data:`TEMP_GLOB` finds those a killed run left behind) and is
created with the user's umask, like any other file (``mkstemp`` would make it 0600).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: the pattern of the temporaries :func:`atomic_path` makes (``.last.pt.1a2b3c4d.tmp``)
TEMP_GLOB = ".*.*.tmp"


def _create_temporary(path: Path) -> Path:
    """A new, empty file beside ``path`` (mode 0666 less the umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
        return tmp


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temporary(path)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as e:
        if e.errno is None or e.filename not in (None, str(tmp_path), tmp_path):
            raise
        # name the file the user knows (e.g. a full disk while writing last.pt)
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def check_writable_folder(path: Path, setting: str) -> None:
    """A UserError (naming ``setting``, e.g. ``out=``) unless ``path`` is a folder this process
    can write into, or one it can make: not a file, not under a file, not on a read-only file
    system or in a folder without write permission. Nothing is created."""
    from kdlab.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{setting} {str(path)!r} is a file; choose a folder.")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{setting} {str(path)!r} lies under {str(ancestor)!r}, which is a file, "
                        "not a folder; choose another folder.")
    if os.access(ancestor, os.W_OK | os.X_OK):
        return
    statvfs = getattr(os, "statvfs", None)  # not on Windows
    read_only = statvfs is not None and bool(statvfs(ancestor).f_flag & os.ST_RDONLY)
    why = "is on a read-only file system" if read_only else "is not writable by this user"
    raise UserError(f"{setting} {str(path)!r} cannot be written: {str(ancestor)!r} {why}; choose "
                    "a folder you can write to.")


def load_weights_only(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, without torch's warning about the
    pickle protocol of a plain-pickle file (its objects are refused all the same, and the
    caller says so in one sentence)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
