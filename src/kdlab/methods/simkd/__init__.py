"""SimKD: the student reuses the teacher's classifier through a projector.

The method ``simkd`` (:mod:`.simkd`).
"""

from kdlab.methods.simkd.simkd import SimKD

__all__ = ["SimKD"]
