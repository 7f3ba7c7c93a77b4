"""Several detection methods' losses at once (``method: {name: combo, parts: [...]}`` with
``task: detection``), e.g. KD on ROI outputs + FPN imitation.

As :class:`kdlab.methods.combo.Combo`: each part is the detection variant of a registered
method (``for_task("detection")``), built with its own options over the shared student and
teacher; the student's training pass and the teacher's pass on its proposals are computed once
per step and handed to every part's ``losses``; the detector's own losses are counted once,
with the combo's ``ce_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from kdlab.config import build_dataclass
from kdlab.errors import UserError
from kdlab.methods.base import Losses
from kdlab.methods.combo import Combo
from kdlab.methods.detection.base import DetectionDistiller, teacher_roi


def _check_parts(parts: list[dict[str, Any]]) -> None:
    from kdlab.methods import METHODS

    if not parts:
        raise UserError("method.parts is empty; list the methods to combine, e.g. "
                        "parts: [{name: kd}, {name: fitnet}].")
    seen: set[str] = set()
    for i, spec in enumerate(parts):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise UserError(f"method.parts[{i}] needs a method name, e.g. {{name: kd}}.")
        try:
            variant = METHODS.get(name).for_task("detection")
        except UserError:
            variant = None
        if variant is None or not issubclass(variant, DetectionDistiller):
            raise UserError(f"Method {name!r} cannot be part of a detection combo; combine "
                            "kd, fitnet and fcfd.")
        if "ce_weight" in options:
            raise UserError(f"method.parts[{i}] ({name}) sets ce_weight; set it once on the "
                            "combo (method.ce_weight).")
        if name in seen:
            raise UserError(f"method.parts lists {name!r} twice; merge its options.")
        seen.add(name)
        build_dataclass(variant.Config, options, where=f"method.parts[{i}]")


class DetectionCombo(Combo):
    """A weighted sum of detection methods' distillation losses."""

    tasks = ("detection",)

    @dataclass
    class Config:
        #: default: KD on ROI outputs + FitNet-style FPN imitation
        parts: list[dict[str, Any]] = field(
            default_factory=lambda: [{"name": "kd"}, {"name": "fitnet"}])
        ce_weight: float = 1.0

        def __post_init__(self) -> None:
            _check_parts(self.parts)

    def forward(self, images: Any, targets: Any,
                index: Tensor | None = None) -> tuple[Tensor | None, Losses]:
        s = self.task.features(self.student, images, targets)
        t = teacher_roi(self.teacher, s)  # type: ignore[arg-type]
        losses: Losses = {}
        if self.cfg.ce_weight:
            losses["ce"] = self.cfg.ce_weight * self.task_loss(s, targets)
        for name, part in self.parts.items():
            for term, value in part.losses(s, t, targets, index).items():
                key = term if term not in losses else f"{name}.{term}"
                losses[key] = value
        return s.logits, losses
