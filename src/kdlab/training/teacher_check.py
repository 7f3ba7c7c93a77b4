"""How good the teacher is, said before a distillation run trains.

A student distilled from an untrained teacher, or from a teacher of other data, trains to the
end without a sign of it. So every run with a frozen teacher evaluates the teacher once on the
validation split before its first epoch (``train.evaluate_teacher``, on by default; off for a
teacher too expensive to evaluate), prints the score, stores it in every row of
``metrics.csv`` (``teacher_<metric>``: not ``val_teacher_<metric>``, which names a network
evaluated each epoch, such as online FCFD's trained teacher), draws it in the curves and
the report, and keeps it in the checkpoint, so that a resumed run reads it instead of
evaluating again. Two one-line warnings follow from it (:func:`chance_warning`,
:func:`below_student_warning`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from kdlab.training.report import COMPANION, LABELS

#: binomial standard deviations above 1/K within which a top-1 counts as chance level
CHANCE_SIGMAS = 3.0
#: metric entries that count what was evaluated, not how well
COUNTS = ("images", "pixels")


def teacher_scores(task: Any, teacher: Any, loader: Any, *, device: Any,
                   amp: str) -> dict[str, float]:
    """The task's validation metrics of ``teacher`` (reduced over processes, like a trained
    network's each epoch); ``images`` / ``pixels`` count what was evaluated."""
    return {k: float(v) for k, v in task.evaluate(teacher, loader, device=device,
                                                  amp=amp).items()}


def columns(scores: Mapping[str, float]) -> dict[str, float]:
    """The ``metrics.csv`` columns of the teacher's scores."""
    return {f"teacher_{k}": v for k, v in scores.items() if k not in COUNTS}


def describe(scores: Mapping[str, float], metric: str, *, resumed: bool) -> str:
    """``teacher: top-1 91.20, top-5 99.70 on the validation split (10000 images)``."""
    keys = [k for k in dict.fromkeys((metric, COMPANION.get(metric, metric))) if k in scores]
    shown = ", ".join(f"{LABELS.get(k, k)} {scores[k]:.2f}" for k in keys)
    counted = next((f" ({int(scores[k])} {k})" for k in COUNTS if k in scores), "")
    when = ", evaluated when the run started" if resumed else ""
    return f"teacher: {shown} on the validation split{counted}{when}"


def chance_level(metric: str, num_classes: int, n: float) -> float | None:
    """The top-1 (percent) below which a classifier of ``num_classes`` classes scored on ``n``
    images is indistinguishable from guessing: 1/K plus :data:`CHANCE_SIGMAS` binomial
    standard deviations; None for other metrics (mIoU, mAP have no such level)."""
    if metric != "top1" or num_classes < 2 or n < 1:
        return None
    p = 1.0 / num_classes
    return 100.0 * (p + CHANCE_SIGMAS * math.sqrt(p * (1 - p) / n))


def chance_warning(scores: Mapping[str, float], metric: str, num_classes: int) -> str | None:
    """The warning for a teacher whose score is at chance level, else None."""
    level = chance_level(metric, num_classes, scores.get("images", 0.0))
    if level is None or scores.get(metric, math.inf) > level:
        return None
    return (f"the teacher's {LABELS.get(metric, metric)} {scores[metric]:.2f} is at chance "
            f"level for {num_classes} classes (1/{num_classes} = {100 / num_classes:.2f}; up "
            f"to {level:.2f} on {int(scores['images'])} images): it looks untrained or made "
            "for other data, so distilling from it teaches guessing; check the teacher's "
            "weights (model.teacher_checkpoint, or the network passed as teacher=)")


def below_student_warning(teacher: Mapping[str, float], student: Mapping[str, float],
                          metric: str) -> str | None:
    """The warning when the student's first evaluation is already above the teacher."""
    if metric not in teacher or metric not in student or student[metric] <= teacher[metric]:
        return None
    label = LABELS.get(metric, metric)
    return (f"after its first epoch the student's {label} ({student[metric]:.2f}) is above "
            f"the teacher's ({teacher[metric]:.2f}): this teacher is weaker than the student "
            "and may hold it back; check the teacher's weights")
