"""ReviewKD: knowledge review with attention-based fusion and the hierarchical context loss.

The method ``reviewkd`` (:mod:`.reviewkd`); its attention-based fusion and the review walk
(:mod:`.abf`), its losses (:mod:`.losses`); what it runs on a detector's FPN
(:mod:`.detection`).
"""

from kdlab.methods.reviewkd.detection import ReviewKDDetection
from kdlab.methods.reviewkd.reviewkd import ReviewKD

ReviewKD.variants = {"detection": ReviewKDDetection}

__all__ = ["ReviewKD", "ReviewKDDetection"]
