"""Relational KD: distance- and angle-wise structure of a batch's embeddings.

The method ``rkd`` (:mod:`.rkd`).
"""

from kdlab.methods.rkd.rkd import RKD

__all__ = ["RKD"]
