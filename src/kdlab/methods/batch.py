"""What one training step hands a method: :class:`Batch`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """One training batch as the trainer hands it to a method: the images, their targets
    (labels, label maps or a detector's box lists) and their dataset indices (CRD's memory
    bank and a teacher cache read them; None outside the trainer)."""

    images: Any
    targets: Any = None
    index: Tensor | None = None
