"""Several detection methods' losses at once (``method: {name: combo, parts: [...]}`` with
``task: detection``), e.g. KD on ROI outputs + FPN imitation.

As :class:`kdlab.methods.combo.combo.Combo`: each part is the detection variant of a registered
method (``for_task("detection")``), built with its own options over the shared student and
teacher; the student's training pass and the teacher's pass on its proposals (the parts' own
:meth:`~kdlab.methods.detection_base.DetectionDistiller.teacher_pass`) are computed once per step
and handed to every part's ``losses``; the detector's own losses are counted once, with the
combo's ``ce_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods.combo.combo import Combo, check_parts
from kdlab.methods.detection_base import DetectionDistiller


def _detection_part(name: str) -> type[DetectionDistiller]:
    from kdlab.methods import METHODS

    try:
        variant = METHODS.get(name).for_task("detection")
    except UserError:
        variant = None
    if variant is None or not issubclass(variant, DetectionDistiller):
        raise UserError(f"Method {name!r} cannot be part of a detection combo; combine "
                        "kd, fitnet and fcfd.")
    return variant


class DetectionCombo(Combo):
    """A weighted sum of detection methods' distillation losses."""

    tasks = ("detection",)

    @dataclass
    class Config:
        #: default: KD on ROI outputs + FitNet-style FPN imitation
        parts: list[dict[str, Any]] = field(
            default_factory=lambda: [{"name": "kd"}, {"name": "fitnet"}])
        ce_weight: float = setting(1.0, range=">= 0")

        def check(self, where: str, task: str | None = None) -> None:
            """Every part: a detection method, named once, with valid settings."""
            check_parts(self.parts, _detection_part)
