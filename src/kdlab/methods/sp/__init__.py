"""Similarity-preserving KD: match the batch's pairwise similarity matrices.

The method ``sp`` (:mod:`.sp`).
"""

from kdlab.methods.sp.sp import SP

__all__ = ["SP"]
