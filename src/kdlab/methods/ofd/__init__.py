"""OFD: a comprehensive overhaul of feature distillation.

The method ``ofd`` (:mod:`.ofd`); its losses (:mod:`.losses`).
"""

from kdlab.methods.ofd.ofd import OFD

__all__ = ["OFD"]
