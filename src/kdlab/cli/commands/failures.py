"""Failures of the machine, not of kdlab, told in one sentence at the command line.

:func:`describe` turns an exception of a kind a user can meet without a bug — a file system
error (by ``errno``), running out of memory, a text file that is not UTF-8, a torchrun peer
that died — into the sentence the CLI prints; for anything else it returns None and the
traceback stays (a bug to report).
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

OOM_HINT = ("lower data.batch_size (and data.eval_batch_size for evaluation), use a smaller "
            "model, or set train.amp=bf16")


def memory_hint(cfg: Any) -> str | None:
    """What to lower when a run of ``cfg`` runs out of memory, when a data setting beyond its
    default drives the allocation (e.g. ``data.canvas`` of the generated scenes); else None
    (:data:`OOM_HINT`)."""
    from kdlab.core.config import DataConfig
    from kdlab.data import DATASETS
    from kdlab.training.prebuilt import is_memory

    if is_memory(cfg.data.name) or cfg.data.name not in DATASETS:
        return None
    setting = DATASETS.get(cfg.data.name).memory_setting(cfg.data)
    if setting is None:
        return None
    key = setting.split(".", 1)[1]
    return (f"lower {setting} (now {getattr(cfg.data, key)}, default "
            f"{getattr(DataConfig(), key)}), which sets the size of the data generated and "
            f"held; then {OOM_HINT}")


def _last_good_epoch(folder: Path) -> str:
    """'the last good checkpoint is epoch N (PATH)' for a run folder, else a fallback."""
    last = folder / "last.pt"
    if not last.is_file():
        return "no epoch checkpoint was written yet"
    try:
        import torch

        epoch = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"]
        return f"the last good checkpoint is epoch {int(epoch) + 1} ({str(last)!r})"
    except Exception:  # noqa: BLE001 - only a hint; the file is checked again on resume
        return f"the last good checkpoint is {str(last)!r}"


def _os_error(e: OSError) -> str | None:
    name = e.filename if e.filename is not None else e.filename2
    path = str(name) if name is not None else "a file"
    shown = repr(path) if name is not None else path
    code = e.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        folder = Path(path).parent if name is not None else Path(".")
        if not any((folder / f).is_file() for f in ("last.pt", "config.yaml")):  # not a run
            return (f"No space left on the device (or quota) while writing {shown}; free some "
                    "space or choose another path.")
        return (f"No space left on the device (or quota) while writing {shown}; "
                f"{_last_good_epoch(folder)}: free some space, then continue with --resume "
                "(or choose another out_dir).")
    if code in (errno.EACCES, errno.EPERM):
        return (f"Permission denied for {shown}; choose a folder you can write to (--out or "
                "train.out_dir) or change its permissions.")
    if code == errno.EROFS:
        return (f"{shown} is on a read-only file system; choose a writable folder (--out or "
                "train.out_dir).")
    if code == errno.ENOENT:
        return f"{shown} does not exist (a folder on its path is missing); check the path."
    if code == errno.EEXIST:
        return (f"{shown} exists and is not a folder; remove it or choose another path "
                "(--out or train.out_dir).")
    if code == errno.ENOTDIR:
        return (f"A part of the path {shown} is a file, not a folder; choose another path "
                "(--out or train.out_dir).")
    if code == errno.EISDIR:
        return f"{shown} is a folder; give a file name."
    if code == errno.ENAMETOOLONG:
        return f"The path {shown} is too long for the file system; choose a shorter one."
    return None


def _out_of_memory(e: BaseException) -> bool:
    import torch

    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text
                                            or "out of memory" in text.lower())


class StoppedByLauncher(Exception):
    """torchrun sent SIGTERM: another process of the job ended."""


def _torchrun_rank() -> tuple[str, str] | None:
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    return None if rank is None or world == "1" else (rank, world)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise StoppedByLauncher


def watch_launcher() -> None:
    """Under torchrun, turn the SIGTERM that stops the survivors of a failed process into
    :class:`StoppedByLauncher` (so that they say why, instead of dying silently)."""
    if _torchrun_rank() is not None:
        signal.signal(signal.SIGTERM, _stop)


def _survivor_message() -> str:
    rank, world = _torchrun_rank() or ("0", "1")
    return (f"Another process of this torchrun job stopped, so rank {rank} of {world} stops "
            "too (torchrun's summary names the rank that failed first, as the root cause); "
            "start the same command with --resume to continue from the last checkpoint.")


def _peer_failure(e: BaseException) -> str | None:
    """A collective that failed because another torchrun process died."""
    if _torchrun_rank() is None:
        return None
    text = str(e)
    markers = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
               "ProcessGroupGloo", "NCCL", "recvBytes", "sendBytes")
    if type(e).__name__ == "DistBackendError" or any(m in text for m in markers):
        return _survivor_message()
    return None


def describe(e: BaseException, memory_hint: str | None = None) -> str | None:
    """The one sentence for ``e``, or None when ``e`` is a bug that keeps its traceback;
    ``memory_hint``: what to lower when ``e`` is an out-of-memory (default :data:`OOM_HINT`),
    from the command that knows which setting drove the allocation."""
    if isinstance(e, StoppedByLauncher):
        return _survivor_message()
    if isinstance(e, UnicodeDecodeError):
        return (f"A text file kdlab read is not UTF-8 ({e.reason} at byte {e.start}); save "
                "recipes and config.yaml as UTF-8 text.")
    if isinstance(e, OSError):
        return _os_error(e)
    if _out_of_memory(e):
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return f"Out of memory ({first}); {memory_hint or OOM_HINT}."
    if isinstance(e, RuntimeError):
        return _peer_failure(e)
    return None
