"""SRRL: knowledge distillation via softmax regression representation learning.

The method ``srrl`` (:mod:`.srrl`); its losses (:mod:`.losses`).
"""

from kdlab.methods.srrl.srrl import SRRL

__all__ = ["SRRL"]
