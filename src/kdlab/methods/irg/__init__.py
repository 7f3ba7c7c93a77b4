"""Instance relationship graph KD: vertices, edges and their transformation across layers.

The method ``irg`` (:mod:`.irg`).
"""

from kdlab.methods.irg.irg import IRG

__all__ = ["IRG"]
