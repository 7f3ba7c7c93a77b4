"""CWD: channel-wise distillation for dense prediction.

The method ``cwd`` (:mod:`.cwd`); its losses (:mod:`.losses`).
"""

from kdlab.methods.cwd.cwd import CWD

__all__ = ["CWD"]
