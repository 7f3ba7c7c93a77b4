"""VID: variational information distillation.

The method ``vid`` (:mod:`.vid`); its losses (:mod:`.losses`).
"""

from kdlab.methods.vid.vid import VID

__all__ = ["VID"]
