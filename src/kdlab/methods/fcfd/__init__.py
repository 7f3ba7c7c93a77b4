"""FCFD, Function-Consistent Feature Distillation (``fcfd``: :mod:`.fcfd`, its losses in
:mod:`.losses`), online FCFD (``online_fcfd``: :mod:`.online`) and FCFD on a two-stage
detector (:mod:`.detection`, FCFD App. D)."""

from kdlab.methods.fcfd.detection import FCFDDetection
from kdlab.methods.fcfd.fcfd import FCFD
from kdlab.methods.fcfd.online import OnlineFCFD

FCFD.variants = {"detection": FCFDDetection}

__all__ = ["FCFD", "FCFDDetection", "OnlineFCFD"]
