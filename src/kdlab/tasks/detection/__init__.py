"""The detection task: :class:`~kdlab.tasks.detection.task.Detection` (boxes, the detector's
own losses, COCO mAP in :mod:`.coco_map`), its two-stage detectors (:mod:`.models`), its
datasets (:mod:`.datasets`) and report pictures (:mod:`.figures`)."""

from kdlab.tasks.detection.task import Detection

__all__ = ["Detection"]
