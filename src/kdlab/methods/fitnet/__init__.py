"""FitNet (``fitnet``: :mod:`.fitnet`, its regressor in :mod:`.regressor`) and FitNet-style FPN
imitation on a two-stage detector (:mod:`.detection`, FCFD App. D)."""

from kdlab.methods.fitnet.detection import FitNetDetection
from kdlab.methods.fitnet.fitnet import FitNet

FitNet.variants = {"detection": FitNetDetection}

__all__ = ["FitNet", "FitNetDetection"]
