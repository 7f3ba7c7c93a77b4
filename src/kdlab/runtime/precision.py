"""Mixed precision: the ``train.amp`` names and their autocast context."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from kdlab.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``amp`` in none | bf16 | fp16 (a null context for none)."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise UserError(f"train.amp {amp!r} is not known; use none, bf16 or fp16.")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def widen(t: torch.Tensor) -> torch.Tensor:
    """Half-precision values (under autocast) as float32; float32 and float64 as they are
    (a loss computed in float64 stays in float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
