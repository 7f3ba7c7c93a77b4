"""One validation pass over a run's config, before any process group, folder or data exists.

:func:`validate_config` checks, in this order: the domain of every numeric setting
(:mod:`kdlab.core.domains`), the choice settings (the loggers and their packages among
them), the rules between settings (warm-up and milestones within the epochs, Nesterov needs
momentum), the names the optimiser and the
schedule know (by building them on a one-parameter probe), the dataset name and the sizes it
is asked for (``DatasetSource.check_sizes``), the task and its options and the method's own
settings. The first problem is a :class:`~kdlab.errors.UserError` naming the
setting. The builders (:func:`kdlab.training.optimisation.build_optimizer`, ``build_scheduler``,
:func:`kdlab.data.build_loaders`) keep their own checks for callers of the Python API.
"""

from __future__ import annotations

from typing import Any

from kdlab.core.config import RunConfig, build_dataclass
from kdlab.core.domains import check_method_domains, check_run_domains
from kdlab.errors import UserError
from kdlab.runtime.precision import AMP_DTYPES
from kdlab.runtime.threads import parse_threads
from kdlab.training.trackers import check_loggers

PROGRESS = ("auto", "bar", "lines", "none")


def validate_config(cfg: RunConfig) -> None:
    """Raise a UserError for the first setting of ``cfg`` that cannot give a correct run."""
    check_run_domains(cfg)
    _check_choices(cfg)
    _check_schedule(cfg)
    _check_builders(cfg)
    _check_names(cfg)


def _check_choices(cfg: RunConfig) -> None:
    t = cfg.train
    if t.amp not in ("none", *AMP_DTYPES):
        raise UserError(f"train.amp {t.amp!r} is not known; use none, bf16 or fp16.")
    if isinstance(t.channels_last, str) and t.channels_last != "auto":
        raise UserError(f"train.channels_last {t.channels_last!r} is not known; use auto, true "
                        "or false.")
    if t.compile is not False:
        from kdlab.training.compiling import backend_of

        backend_of(t.compile)
    parse_threads(t.threads)
    check_loggers(t.loggers)
    if t.progress not in PROGRESS:
        raise UserError(f"train.progress {t.progress!r} is not known; use auto, bar, lines or "
                        "none.")


def _check_schedule(cfg: RunConfig) -> None:
    s = cfg.schedule
    if s.iterations is None and s.warmup_epochs >= s.epochs:
        raise UserError(f"schedule.warmup_epochs must be less than schedule.epochs "
                        f"({s.epochs}), got {s.warmup_epochs}.")
    if s.warmup_epochs and s.warmup_iters:
        raise UserError("schedule.warmup_epochs and schedule.warmup_iters are two warm-ups; "
                        "set one of them to 0.")
    if s.name == "multistep":
        length, unit = ((s.epochs, "epoch") if s.iterations is None
                        else (s.iterations, "iteration"))
        late = [m for m in s.milestones if m > length]
        if late:
            raise UserError(
                f"schedule.milestones {late} come after the last {unit} (schedule.{unit}s="
                f"{length}), so the LR would never drop there; give milestones within the "
                f"{unit}s (e.g. --set schedule.milestones=[...]) or raise schedule.{unit}s.")
        if sorted(s.milestones) != list(s.milestones):
            raise UserError(f"schedule.milestones {s.milestones} must be in increasing order.")
    o = cfg.optim
    if o.name == "sgd" and o.nesterov and o.momentum <= 0:
        raise UserError("optim.nesterov needs optim.momentum > 0; set a momentum such as 0.9 "
                        "or nesterov false.")


def _check_builders(cfg: RunConfig) -> None:
    """The optimiser and schedule names (and anything else their builders refuse)."""
    import torch

    from kdlab.training.optimisation import build_optimizer, build_scheduler

    probe = torch.nn.Linear(1, 1)
    build_scheduler(cfg.schedule, build_optimizer(cfg.optim, list(probe.parameters())))


#: the input settings only some datasets read, with their defaults
INPUT_DEFAULTS = {"channel_order": "rgb", "pixel_mean": None, "pixel_std": None,
                  "scales": None, "pad": "zero", "crop": None}


def _check_input_settings(d: Any, source: Any) -> None:
    """``data.channel_order`` / ``pixel_mean`` / ``pixel_std`` / ``scales`` / ``pad`` / ``crop``
    only for a dataset that reads them (the segmentation folders)."""
    if getattr(source, "input_settings", False):
        return
    given = [k for k, default in INPUT_DEFAULTS.items() if getattr(d, k) != default]
    if given:
        raise UserError(f"data.{given[0]} is read by the segmentation folder datasets (voc, "
                        f"cityscapes, ade20k) only; dataset {d.name!r} normalises and augments "
                        f"in its own way: remove data.{given[0]}.")


def _check_names(cfg: RunConfig) -> None:
    from kdlab.data import DATASETS
    from kdlab.methods import METHODS
    from kdlab.training.prebuilt import is_memory

    d = cfg.data
    if not is_memory(d.name):
        source = DATASETS.get(d.name)
        source.check_sizes(d)  # sizes this machine cannot hold, before any work
        _check_input_settings(d, source)
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
    options = build_dataclass(method.Config, cfg.method_options, where=f"method.{cfg.method_name}")
    check_method_domains(options, f"method.{cfg.method_name}")
