"""DML: deep mutual learning, online distillation between peers trained from scratch.

The method ``dml`` (:mod:`.dml`).
"""

from kdlab.methods.dml.dml import DML

__all__ = ["DML"]
