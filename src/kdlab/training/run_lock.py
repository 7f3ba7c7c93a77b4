"""One run per run folder: an exclusive lock held for the life of a run.

:class:`RunLock` takes an ``fcntl.flock`` lock on ``RUN/.kdlab.lock`` and writes the holder's
process id and host into it. The operating system drops the lock when the process ends in
any way (kill -9 included), so a lock file left by a dead run is stale and simply taken
over; a second run started into a folder that a live run holds is refused with a
:class:`~kdlab.errors.UserError` that names the holder. The lock file is removed when the run
ends; a folder the run created goes too when it is empty or the run failed before its first
checkpoint (``release(discard=True)``: a failed start leaves nothing behind). With the lock held,
:func:`remove_stale_temporaries` deletes the half-written temporaries
(``.last.pt.XXXXXXXX.tmp``) of a run that was killed during a write.

Under torchrun the rank-0 process holds the lock for the whole job. The lock is advisory and
local: it protects against two kdlab runs, not against other programs, and on network file
systems without ``flock`` support it may not exclude a run on another machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import time
from pathlib import Path
from types import TracebackType

from kdlab.errors import UserError
from kdlab.runtime.files import TEMP_GLOB

LOCK_NAME = ".kdlab.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, runs are not excluded
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """Exclusive lock on a run folder; use as a context manager or call acquire / release."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._created = False  # the folder was made by acquire(): removed again if left empty

    def acquire(self) -> RunLock:
        """Create the folder if needed and take the lock, or raise a UserError if a live
        process holds it."""
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if fcntl is None:  # pragma: no cover
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise UserError(
                    f"Run folder {str(self.folder)!r} is in use by another kdlab run "
                    f"({self._holder()}); wait for it to finish, stop it, or choose another "
                    "out_dir.") from None
            # The holder before us may have removed the file after we opened it: then our
            # lock is on a file no one else will see; take the lock on the current file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        return self

    def _holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "a process that has not written its id yet"

    def release(self, *, discard: bool = False) -> None:
        """Remove the lock file and drop the lock (the order keeps a waiting run safe). With
        ``discard`` (a failed start), a folder that :meth:`acquire` created and that holds no
        checkpoint is emptied first, while the lock is still held, so that it is removed."""
        if self._fd is None:
            return
        if discard and self._created and not any(self.folder.glob("*.pt")):
            for child in self.folder.iterdir():
                if child.name == LOCK_NAME:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
        if self._created:
            with contextlib.suppress(OSError):  # not empty: the run wrote something
                self.folder.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the atomic-write temporaries in ``folder`` (call it with the run's lock held:
    then no live writer owns them); returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(TEMP_GLOB):
        if tmp.is_file():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (read from the environment before the group exists), or a
    single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"
