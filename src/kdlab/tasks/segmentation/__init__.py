"""The segmentation task: :class:`~kdlab.tasks.segmentation.task.Segmentation` ("segmentation"),
its metrics (:mod:`.metrics`), whole-image / sliding-window inference (:mod:`.inference`) and
report pictures (:mod:`.figures`)."""

from __future__ import annotations

from kdlab.tasks.segmentation.task import Segmentation

__all__ = ["Segmentation"]
