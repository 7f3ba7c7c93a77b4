"""Tasks: classification, segmentation, detection (see :mod:`kdlab.tasks.base`).

>>> from kdlab.tasks import build_task
>>> build_task("classification").primary
'top1'
"""

from __future__ import annotations

from kdlab.core.autoimport import import_submodules
from kdlab.tasks.base import TASKS, Task, build_task

import_submodules(__name__)

__all__ = ["TASKS", "Task", "build_task"]
