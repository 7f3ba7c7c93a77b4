"""Decoupled knowledge distillation: CE + warmed-up (alpha * TCKD + beta * NCKD).

The method ``dkd`` (:mod:`.dkd`).
"""

from kdlab.methods.dkd.dkd import DKD

__all__ = ["DKD"]
