"""SKD: structured knowledge distillation for semantic segmentation.

The method ``skd`` (:mod:`.skd`); its critic (:mod:`.discriminator`), its losses
(:mod:`.losses`).
"""

from kdlab.methods.skd.skd import SKD

__all__ = ["SKD"]
