"""AT: attention transfer between student and teacher stage outputs.

The method ``at`` (:mod:`.at`).
"""

from kdlab.methods.at.at import AT

__all__ = ["AT"]
