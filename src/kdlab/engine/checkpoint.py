"""Run checkpoints: plain dicts of tensors and primitives, written atomically.

A checkpoint must load with ``torch.load(weights_only=True)`` (no pickled objects), so that a
file handed in by a user cannot run code. :func:`plain` turns the few non-plain values that
PyTorch's own ``state_dict`` methods produce (e.g. ``MultiStepLR``'s ``Counter``) into dicts.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kdlab.engine.io import atomic_write
from kdlab.errors import UserError

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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: the old file stays intact until the new one is
    complete on disk."""
    atomic_write(Path(path), lambda tmp: torch.save(plain(state), tmp))


def copy_checkpoint(source: str | Path, path: str | Path) -> None:
    """Copy a written checkpoint to ``path`` atomically (no second serialisation)."""
    atomic_write(Path(path), lambda tmp: shutil.copyfile(source, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU with ``weights_only=True``.

    A missing, truncated or corrupt file, or one that holds pickled objects, is a UserError.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Checkpoint {str(p)!r} does not exist; check the path or train first.")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a broken file can fail anywhere in the unpickler
        # (UnpicklingError, EOFError, zipfile errors, IndexError from a torn stream, ...)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"Checkpoint {str(p)!r} cannot be read ({first}); it is truncated, corrupt or not a "
            "PyTorch checkpoint: use another checkpoint or train again."
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"Checkpoint {str(p)!r} does not hold a dict; it is not a kdlab "
                        "checkpoint: use another file.")
    return state
