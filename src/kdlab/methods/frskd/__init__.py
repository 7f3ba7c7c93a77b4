"""FRSKD, feature refinement via self-knowledge distillation (``frskd``: :mod:`.frskd`, its
self-teacher :mod:`.bifpn`), and FRSKD+SLA (``frskd_sla``: :mod:`.frskd_sla`, the label
augmentation's losses in :mod:`.sla`)."""

from kdlab.methods.frskd.frskd import FRSKD
from kdlab.methods.frskd.frskd_sla import FRSKDSLA

__all__ = ["FRSKD", "FRSKDSLA"]
