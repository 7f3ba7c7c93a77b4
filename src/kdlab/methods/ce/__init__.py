"""Plain supervised training: cross-entropy on the labels (teachers and baselines).

The method ``ce`` (:mod:`.ce`).
"""

from kdlab.methods.ce.ce import CrossEntropy

__all__ = ["CrossEntropy"]
