"""The allowed range of every numeric setting, checked before a run starts.

A value outside its domain would give a run that looks fine and is wrong (a negative LR
decay, a zero temperature, NaN), so :func:`check_run_domains` and
:func:`check_method_domains` reject it up front with a sentence naming the setting.

Run settings have one entry each in :data:`RUN_DOMAINS` (by dotted key). A method's
settings are matched by name (:data:`METHOD_DOMAINS`, then the suffix rules of
:data:`METHOD_SUFFIX_DOMAINS`), so that every method gets the same rule for the same kind of
setting (``temperature > 0``, ``*_weight >= 0``) without each method repeating it. Settings
that are ``null`` (automatic) are not checked; a list of numbers is checked item by item.
Non-finite floats (``.nan``, ``.inf``) are refused when the config is read
(:func:`kdlab.core.config.build_dataclass`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from kdlab.errors import UserError


@dataclass(frozen=True)
class Domain:
    """An interval of numbers: ``low``/``high`` bounds (None = unbounded), open or closed."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None
                    and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        def num(x: float) -> str:
            return f"{x:g}"

        if self.high is None and self.low is not None:
            return f"{'greater than' if self.low_open else 'at least'} {num(self.low)}"
        if self.low is None and self.high is not None:
            return f"{'less than' if self.high_open else 'at most'} {num(self.high)}"
        if self.low is None:
            return "a finite number"
        assert self.high is not None
        return (f"in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}"
                f"{')' if self.high_open else ']'}")


POSITIVE = Domain(low=0, low_open=True)
NON_NEGATIVE = Domain(low=0)
AT_LEAST_ONE = Domain(low=1)
UNIT = Domain(low=0, high=1)
UNIT_OPEN_TOP = Domain(low=0, high=1, high_open=True)
#: stage numbers, indices (-1 = the last) and counts: the method checks them against the
#: network's stages, which only it knows
STAGE_INDEX = Domain()

#: every numeric run setting (a key absent from this kdlab's config is skipped)
RUN_DOMAINS: dict[str, Domain] = {
    "data.batch_size": AT_LEAST_ONE,
    "data.eval_batch_size": AT_LEAST_ONE,
    "data.num_workers": NON_NEGATIVE,
    "data.train_subset": AT_LEAST_ONE,
    "data.val_subset": AT_LEAST_ONE,
    "data.canvas": Domain(low=28),  # Fashion-MNIST scenes: items are 28x28
    "data.scenes_train": AT_LEAST_ONE,
    "data.scenes_val": AT_LEAST_ONE,
    "data.mean": UNIT,  # in-memory data: per channel, on the [0, 1] pixel scale
    "data.std": POSITIVE,
    "data.pixel_mean": Domain(low=0, high=255),  # the 0..255 pixel scale
    "data.pixel_std": POSITIVE,
    "data.scales": POSITIVE,
    "data.crop": AT_LEAST_ONE,
    "optim.lr": POSITIVE,
    "optim.momentum": UNIT_OPEN_TOP,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.weight_decay_norm": NON_NEGATIVE,
    "schedule.epochs": AT_LEAST_ONE,
    "schedule.gamma": POSITIVE,
    "schedule.warmup_epochs": NON_NEGATIVE,
    "schedule.warmup_iters": NON_NEGATIVE,
    "schedule.warmup_factor": Domain(low=0, low_open=True, high=1),
    "schedule.milestones": AT_LEAST_ONE,
    "schedule.power": POSITIVE,  # poly schedule
    "schedule.iterations": AT_LEAST_ONE,
    "train.seed": NON_NEGATIVE,
    "train.eval_every": AT_LEAST_ONE,
    "train.eval_every_iters": AT_LEAST_ONE,
    "train.max_steps_per_epoch": AT_LEAST_ONE,
    "train.threads": AT_LEAST_ONE,  # or "auto" (kdlab.runtime.threads)
}

#: method settings by exact name
METHOD_DOMAINS: dict[str, Domain] = {
    "temperature": POSITIVE,
    "label_smoothing": UNIT_OPEN_TOP,
    "momentum": UNIT,  # a memory bank's update rate
    "alpha": NON_NEGATIVE,
    "beta": NON_NEGATIVE,
    "gamma": POSITIVE,
    "eps": POSITIVE,
    "init_variance": POSITIVE,
    "p": POSITIVE,
    "width": POSITIVE,
    "order": AT_LEAST_ONE,
    "depth": AT_LEAST_ONE,
    "repeat": AT_LEAST_ONE,
    "factor": AT_LEAST_ONE,
    "feat_dim": AT_LEAST_ONE,
    "num_negatives": AT_LEAST_ONE,
    "num_paths": NON_NEGATIVE,  # FCFD: 0 = appearance loss only
    "k_min": AT_LEAST_ONE,
    "levels": STAGE_INDEX,
    "mid_channels": AT_LEAST_ONE,
    "position": STAGE_INDEX,
    "positions": STAGE_INDEX,
    "app_positions": STAGE_INDEX,
    "stages": STAGE_INDEX,
    "hcl_levels": AT_LEAST_ONE,
    "warmup": NON_NEGATIVE,
    "pool_scale": Domain(low=0, high=1, low_open=True),  # SKD: pooling window / map size
    "pair_stage": STAGE_INDEX,
}

#: method settings by the end of their name (first match wins)
METHOD_SUFFIX_DOMAINS: tuple[tuple[str, Domain], ...] = (
    ("weight", NON_NEGATIVE),  # weight, ce_weight, kd_weight, func_l2_weight, ...
    ("_alpha", NON_NEGATIVE),
    ("_beta", NON_NEGATIVE),
    ("_factor", AT_LEAST_ONE),
    ("_epochs", NON_NEGATIVE),  # warmup_epochs, l2_warmup_epochs
    ("temperature", POSITIVE),
    ("_lr", POSITIVE),  # a separately optimised module's learning rate (critic_lr)
    ("_width", AT_LEAST_ONE),  # a module's channel width (critic_width)
)


def method_domain(name: str) -> Domain | None:
    """The domain of a method setting called ``name`` (None: not a numeric rule we know)."""
    if name in METHOD_DOMAINS:
        return METHOD_DOMAINS[name]
    for suffix, domain in METHOD_SUFFIX_DOMAINS:
        if name.endswith(suffix):
            return domain
    return None


def check_value(value: Any, domain: Domain, where: str) -> None:
    """Raise a UserError if ``value`` (a number, a list of numbers or None) leaves ``domain``."""
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_value(item, domain, f"{where}[{i}]")
        return
    if isinstance(value, (int, float)) and value not in domain:
        raise UserError(f"{where} must be {domain}, got {value!r}.")


def _lookup(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, part):
            return False, None
        node = getattr(node, part)
    return True, node


def check_run_domains(cfg: Any) -> None:
    """Every setting of :data:`RUN_DOMAINS` that ``cfg`` (a RunConfig) has, in table order."""
    for key, domain in RUN_DOMAINS.items():
        present, value = _lookup(cfg, key)
        if present:
            check_value(value, domain, key)


def check_method_domains(options: Any, where: str) -> None:
    """Each field of a method's ``Config`` instance whose name has a domain."""
    for f in dataclasses.fields(options):
        domain = method_domain(f.name)
        if domain is not None:
            check_value(getattr(options, f.name), domain, f"{where}.{f.name}")
