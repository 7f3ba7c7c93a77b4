"""Tasks: classification, segmentation, detection (see :mod:`kdlab.tasks.base`).

>>> from kdlab.tasks import build_task
>>> build_task("classification").primary
'top1'
"""

from __future__ import annotations

from kdlab.tasks.base import TASKS, Task, build_task

__all__ = ["TASKS", "Task", "build_task"]
