"""CRD: contrastive representation distillation with memory banks and NCE.

The method ``crd`` (:mod:`.crd`); its losses (:mod:`.losses`), its memory bank
(:mod:`.memory_bank`).
"""

from kdlab.methods.crd.crd import CRD

__all__ = ["CRD"]
