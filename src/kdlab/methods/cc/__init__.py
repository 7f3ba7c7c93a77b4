"""Correlation congruence: match the correlation between a batch's embeddings.

The method ``cc`` (:mod:`.cc`).
"""

from kdlab.methods.cc.cc import CC

__all__ = ["CC"]
