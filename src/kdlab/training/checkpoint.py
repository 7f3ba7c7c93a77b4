"""Run checkpoints: plain dicts of tensors and primitives, written atomically.

A checkpoint must load with ``torch.load(weights_only=True)`` (no pickled objects), so that a
file handed in by a user cannot run code. :func:`plain` turns the few non-plain values that
PyTorch's own ``state_dict`` methods produce (e.g. ``MultiStepLR``'s ``Counter``) into dicts.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kdlab.errors import UserError
from kdlab.runtime.files import atomic_write, load_weights_only

FORMAT = "kdlab-run"
VERSION = 2  # 2: best_score + metric (was best_top1), separate_optimizers


def plain(value: Any) -> Any:
    """``value`` with mappings as plain dicts and sequences as lists (recursively)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
        return None
    return st.f_bavail * st.f_frsize


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: the old file stays intact until the new one is
    complete on disk. A full disk is an ``OSError`` with ``errno.ENOSPC`` naming ``path``
    (PyTorch's writer reports it as a RuntimeError about the stream position)."""
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: torch.save(plain(state), tmp))
    except RuntimeError:
        free = _free_bytes(path.parent)
        if free is None or free >= _nbytes(state) + (1 << 16):
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None


def copy_checkpoint(source: str | Path, path: str | Path) -> None:
    """Copy a written checkpoint to ``path`` atomically (no second serialisation)."""
    atomic_write(Path(path), lambda tmp: shutil.copyfile(source, tmp))


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True`` (``mmap``: map the tensors
    instead of reading them, for a quick look at the small entries).

    A missing, truncated or corrupt file, or one that holds pickled objects, is a UserError.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"Checkpoint {str(p)!r} is a folder; give the file in it, e.g. "
                        f"{str(p / 'best.pt')!r}.")
    if not p.is_file():
        raise UserError(f"Checkpoint {str(p)!r} does not exist; check the path or train first.")
    try:
        state = load_weights_only(p, mmap=mmap)
    except pickle.UnpicklingError as e:
        plain = _plain_pickle(p)
        if "global" not in str(e).lower() and not plain:  # not objects the unpickler refused
            raise _unreadable(p, "unknown data") from None
        what = ("is a plain pickle of Python objects (written by pickle, not torch.save)"
                if plain else "holds pickled Python objects")
        raise UserError(
            f"Checkpoint {str(p)!r} cannot be read: it {what}, so it is not a kdlab or "
            "torchvision checkpoint, and it was not loaded, for safety; give a kdlab run's "
            "best.pt / last.pt or a .safetensors export.") from None
    except Exception as e:  # noqa: BLE001 - a broken file can fail anywhere in the unpickler
        # (UnpicklingError, EOFError, zipfile errors, IndexError from a torn stream, ...)
        raise _unreadable(p, e) from None
    if not isinstance(state, dict):
        raise UserError(f"Checkpoint {str(p)!r} does not hold a dict; it is not a kdlab "
                        "checkpoint: use another file.")
    return state


def _plain_pickle(p: Path) -> bool:
    """Whether ``p`` starts like a file of ``pickle.dump`` with protocol 3 or later (torch.save
    writes a zip archive, or protocol 2 in its legacy format)."""
    with open(p, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and head[1] >= 3


def _unreadable(p: Path, e: BaseException | str) -> UserError:
    """The error for a file that is not a readable checkpoint; ``e``'s first sentence (not
    PyTorch's advice that follows it) says why."""
    first = e if isinstance(e, str) else (str(e).strip().splitlines() or [""])[0]
    first = first.split(". ")[0].strip().rstrip(".")[:160] or type(e).__name__
    return UserError(f"Checkpoint {str(p)!r} cannot be read ({first}); it is truncated, "
                     "corrupt or not a PyTorch checkpoint: use another checkpoint or train "
                     "again.")
