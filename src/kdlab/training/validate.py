"""One validation pass over a run's config, before any process group, folder, data or network
exists.

:func:`validate_config` checks, in this order: every section of the run (``data``, ``model``,
``optim``, ``schedule``, ``train``) against the domains declared on its fields and the rules
between its settings (warm-up and milestones within the epochs, Nesterov needs momentum;
:func:`kdlab.core.settings.check_settings`), the ``torch.compile`` backend, the dataset name
and the sizes it is asked for (``DatasetSource.check_sizes``), the task and its options, and
the method's settings (:func:`kdlab.methods.method_config`: their domains and rules, a
combo's parts included). The first problem is a :class:`~kdlab.errors.UserError` naming the
setting. What only the built networks can bound (a stage number against a network's stages)
is checked by the method's ``setup`` when the networks exist.
"""

from __future__ import annotations

import dataclasses

from kdlab.core.config import RunConfig
from kdlab.core.settings import check_settings
from kdlab.errors import UserError


def validate_config(cfg: RunConfig) -> None:
    """Raise a UserError for the first setting of ``cfg`` that cannot give a correct run."""
    task = getattr(cfg, "task", None)
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if dataclasses.is_dataclass(section):
            check_settings(section, f.name, task)
    if cfg.train.compile is not False:
        from kdlab.training.compiling import backend_of

        backend_of(cfg.train.compile)
    _check_names(cfg)


def _check_names(cfg: RunConfig) -> None:
    from kdlab.data import DATASETS
    from kdlab.methods import METHODS, method_config
    from kdlab.training.prebuilt import is_memory

    d = cfg.data
    if not is_memory(d.name):
        DATASETS.get(d.name).check_sizes(d)  # sizes this machine cannot hold, before any work
        given = [k for k in ("mean", "std") if getattr(d, k) is not None]
        if given or d.normalized:
            key = f"data.{given[0]}" if given else "data.normalized"
            raise UserError(f"{key} is for data given in memory (kdlab.distill); dataset "
                            f"{d.name!r} normalises with its own statistics: remove {key}.")
    task = getattr(cfg, "task", None)
    if task is not None:
        from kdlab.tasks import build_task

        build_task(task, options=cfg.task_options)  # the name and the task's own options
    method = METHODS.get(cfg.method_name)
    if task is not None:
        method = method.for_task(task)
    method_config(method, cfg.method_options, name=cfg.method_name,
                  task=task or "classification")
