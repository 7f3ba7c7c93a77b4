"""The segmentation task: :class:`~kdlab.tasks.segmentation.task.Segmentation` ("segmentation"),
its metrics (:mod:`.metrics`), whole-image / sliding-window inference (:mod:`.inference`),
report pictures (:mod:`.figures`), its networks (:mod:`.models`) and datasets
(:mod:`.datasets`)."""

from kdlab.tasks.segmentation.task import Segmentation

__all__ = ["Segmentation"]
