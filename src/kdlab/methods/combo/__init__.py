"""Several methods' losses at once over one student and one teacher (``combo``: :mod:`.combo`),
and over a detector (:mod:`.detection`)."""

from kdlab.methods.combo.combo import Combo
from kdlab.methods.combo.detection import DetectionCombo

Combo.variants = {"detection": DetectionCombo}

__all__ = ["Combo", "DetectionCombo"]
