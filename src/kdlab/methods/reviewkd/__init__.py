"""ReviewKD: knowledge review with attention-based fusion and the hierarchical context loss.

The method ``reviewkd`` (:mod:`.reviewkd`); its attention-based fusion (:mod:`.abf`), its losses
(:mod:`.losses`).
"""

from kdlab.methods.reviewkd.reviewkd import ReviewKD

__all__ = ["ReviewKD"]
