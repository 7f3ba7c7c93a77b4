"""The search space of ``kdlab tune``: ``--space KEY=SPEC``, one dimension each.

``SPEC`` is one of

- ``LOW:HIGH``: a range, sampled uniformly;
- ``LOW:HIGH:log``: a range, sampled uniformly on a log scale (``LOW > 0``);
- ``LOW:HIGH:STEP``: a range on the grid ``LOW, LOW + STEP, ...``;
- ``A,B,C``: a choice among values, each read as YAML (``kd``, ``0.5``, ``true``).

Whether a range is of integers or of floats is the setting's type: ``method.num_paths=1:4``
samples integers, ``method.temperature=1:8`` floats. ``KEY+KEY=SPEC`` draws one value for
several settings, e.g. FCFD's L2 weights, which the paper ties:
``method.app_weight+method.func_l2_weight=0.005:10:log``.

Keys are the dotted keys of ``--set``; they are checked against the config the same way, and
both ends of every range and every choice are checked against the settings' ranges
(:mod:`kdlab.core.domains`) before a trial starts.

Conditional spaces: with ``method.name=kd,dkd,fcfd`` among the dimensions, each trial first
chooses the method; a ``method.*`` dimension is sampled only in the trials whose method has
that setting (``method.temperature`` for all three, ``method.app_weight`` for FCFD alone), so
one study compares the methods, each with its own settings searched. The recipe's own method
options go with the recipe's method: a trial of another method keeps only those it also has.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from kdlab.core.config import RunConfig
from kdlab.core.recipe_yaml import load_yaml
from kdlab.errors import UserError

#: settings the search may not vary, and why
RESERVED = {
    "train.out_dir": "each trial has its own run folder under kdlab tune's --out",
    "schedule.epochs": "give --epochs",
    "plugins": "give --import or the recipe's plugins",
    "method": "search method.name",
}
METHOD_NAME = "method.name"
_INT = re.compile(r"^[-+]?[0-9][0-9_]*$")
_SYNTAX = ("give KEY=LOW:HIGH, KEY=LOW:HIGH:log, KEY=LOW:HIGH:STEP or KEY=A,B,C "
           "(e.g. method.temperature=1:8:log)")


@dataclass(frozen=True)
class Dimension:
    """One searched setting (or several tied ones, ``keys``)."""

    text: str  # as the user wrote it
    keys: tuple[str, ...]
    kind: str  # int | float | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    #: with method.name searched, the methods that have this method.* setting (None: all)
    methods: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        """The parameter's name in the study."""
        return "+".join(self.keys)

    def canonical(self) -> str:
        """The dimension written in one normal form (a study records its space so)."""
        if self.kind == "choice":
            spec = ",".join(json.dumps(c) for c in self.choices)
        else:
            spec = f"{_num(self.low)}:{_num(self.high)}:" + (
                "log" if self.log else _num(self.step) if self.step is not None else "linear")
            spec = f"{self.kind} {spec}"
        return f"{self.name}={spec}"

    def probe_values(self) -> list[Any]:
        """The values whose settings are checked before the search: both ends, or each
        choice."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial: Any) -> Any:
        """Draw this dimension's value in an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


# --------------------------------------------------------------------- parsing
def parse_space(texts: Sequence[str], base: RunConfig) -> list[Dimension]:
    """Every ``--space`` text as a :class:`Dimension` typed by the config ``base`` (the recipe
    with ``--set``); a mistake is a UserError naming the ``--space`` it is in."""
    if not texts:
        raise UserError(f"kdlab tune needs at least one --space to search; {_SYNTAX}.")
    parsed = [_parse_one(t) for t in texts]
    seen: dict[str, str] = {}
    for text, keys, _spec in parsed:
        for key in keys:
            if key in seen:
                raise UserError(f"--space {text!r} searches {key}, which --space {seen[key]!r} "
                                "searches already; give each setting once.")
            seen[key] = text
    method_dims = [p for p in parsed if METHOD_NAME in p[1]]
    methods: tuple[str, ...] | None = None
    if method_dims:
        text, keys, spec = method_dims[0]
        if len(keys) > 1 or not isinstance(spec, list):
            raise UserError(f"--space {text!r}: method.name takes a choice of its own, e.g. "
                            "method.name=kd,dkd,fcfd.")
        methods = tuple(str(c) for c in spec)
    return [_typed(text, keys, spec, base, methods) for text, keys, spec in parsed]


def _parse_one(text: str) -> tuple[str, tuple[str, ...], Any]:
    """``KEY[+KEY]=SPEC`` -> (text, keys, spec): spec is a list of choices or a tuple
    (low, high, mode) of number texts."""
    if "=" not in text:
        raise UserError(f"--space {text!r} has no '='; {_SYNTAX}.")
    key_text, spec = (part.strip() for part in text.split("=", 1))
    keys = tuple(k.strip() for k in key_text.split("+"))
    for key in keys:
        parts = key.split(".")
        if not key or not all(parts):
            raise UserError(f"--space {text!r} has an empty key; {_SYNTAX}.")
        for reserved, why in RESERVED.items():
            if key == reserved or (reserved != "method" and key.startswith(reserved + ".")):
                raise UserError(f"--space {text!r}: {key} is not searched ({why}).")
    if ":" in spec:
        bounds = [p.strip() for p in spec.split(":")]
        if len(bounds) not in (2, 3) or not bounds[0] or not bounds[1]:
            raise UserError(f"--space {text!r}: a range is LOW:HIGH with an optional :log or "
                            f":STEP; {_SYNTAX}.")
        return text, keys, (bounds[0], bounds[1], bounds[2] if len(bounds) == 3 else "linear")
    if "," in spec:
        items = [p.strip() for p in spec.split(",")]
        if not all(items):
            raise UserError(f"--space {text!r} has an empty choice; list values as A,B,C.")
        choices = []
        for item in items:
            try:
                value = load_yaml(item)
            except yaml.YAMLError:
                value = item
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise UserError(f"--space {text!r}: choice {item!r} is not a single value; "
                                "choices are numbers, words, true/false or null.")
            if value in choices:
                raise UserError(f"--space {text!r} lists {item!r} twice; give each choice once.")
            choices.append(value)
        return text, keys, choices
    raise UserError(f"--space {text!r} is neither a range nor a choice of two or more values "
                    f"(one value is --set KEY=VALUE); {_SYNTAX}.")


def _number(text: str, where: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise UserError(f"--space {where!r}: {text!r} is not a number; {_SYNTAX}.") from None
    if not math.isfinite(value):
        raise UserError(f"--space {where!r}: {text!r} is not a finite number.")
    return value


def _typed(text: str, keys: tuple[str, ...], spec: Any, base: RunConfig,
           methods: tuple[str, ...] | None) -> Dimension:
    """The dimension with its kind (from the settings' types) and the methods it applies to."""
    applies: tuple[str, ...] | None = None
    candidates = methods or (base.method_name,)
    if methods is not None and keys != (METHOD_NAME,) and keys[0].startswith("method."):
        if not all(k.startswith("method.") for k in keys):
            raise UserError(f"--space {text!r} ties method settings with other settings while "
                            "method.name is searched; tie settings of one kind.")
        applies = tuple(m for m in methods
                        if all(_setting_type(k, m, base) is not None for k in keys))
        if not applies:
            names = ", ".join(k.split(".", 1)[1] for k in keys)
            raise UserError(f"--space {text!r}: none of the searched methods "
                            f"({', '.join(methods)}) has the setting {names}; check the name "
                            "with `kdlab list methods`.")
        candidates = applies
    if isinstance(spec, list):
        if len(spec) < 2:
            raise UserError(f"--space {text!r} has one choice; give two or more, or fix the "
                            "value with --set.")
        return Dimension(text, keys, "choice", choices=tuple(spec), methods=applies)
    low_text, high_text, mode = spec
    low, high = _number(low_text, text), _number(high_text, text)
    log, step, step_text = mode == "log", None, None
    if mode not in ("log", "linear"):
        if not re.match(r"^[-+0-9._eE]+$", mode):
            raise UserError(f"--space {text!r}: after LOW:HIGH comes log, linear or a STEP "
                            f"number, not {mode!r}.")
        step, step_text = _number(mode, text), mode
    written_ints = all(_INT.match(t) for t in (low_text, high_text, step_text) if t is not None)
    types_ = [_setting_type(k, m, base) for k in keys for m in candidates]
    kind = _number_kind(types_, written_ints, text)
    if low >= high:
        raise UserError(f"--space {text!r} is an empty range: LOW must be below HIGH "
                        f"(got {low_text}:{high_text}).")
    if log and low <= 0:
        raise UserError(f"--space {text!r}: a log range needs LOW > 0 (got {low_text}).")
    if kind == "int" and log and low < 1:
        raise UserError(f"--space {text!r}: an integer log range needs LOW >= 1.")
    if step is not None and not 0 < step <= high - low:
        raise UserError(f"--space {text!r}: STEP must be above 0 and at most HIGH - LOW.")
    return Dimension(text, keys, kind, low=low, high=high, log=log, step=step, methods=applies)


def _number_kind(types_: list[Any], written_ints: bool, text: str) -> str:
    """int or float, from the annotations of the searched settings (None: not known yet)."""
    allowed: set[Any] = set()
    for tp in types_:
        if tp is None or tp is Any:
            allowed.add(Any)
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            allowed.update(a for a in typing.get_args(tp) if a is not type(None))
        else:
            allowed.add(tp)
    if float in allowed:
        return "float"
    if int in allowed:
        if not written_ints:
            raise UserError(f"--space {text!r} is an integer setting: give whole numbers.")
        return "int"
    if allowed <= {Any}:
        return "int" if written_ints else "float"
    raise UserError(f"--space {text!r}: the setting is not a number; search it as a choice "
                    "(A,B,C).")


def _setting_type(key: str, method: str, base: RunConfig) -> Any:
    """The annotation of a dotted setting; None for a key the config does not know (the
    checks of :func:`probes` then name it), Any inside a free mapping (``task_options``)."""
    parts = key.split(".")
    if parts[0] == "method":
        if len(parts) != 2:
            return None
        from kdlab.methods import METHODS

        try:
            cls = METHODS.get(method).for_task(base.task).Config
        except UserError:
            return None
        return typing.get_type_hints(cls).get(parts[1])
    cls: Any = RunConfig
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return Any  # a free mapping (e.g. task_options, model.student_options)
        tp = typing.get_type_hints(cls).get(part)
        if tp is None:
            return None
        cls = tp
        if i == len(parts) - 1:
            return tp
    return None


# --------------------------------------------------------------------- trials
def sample(trial: Any, space: Sequence[Dimension]) -> dict[str, Any]:
    """Draw a trial's values, ``{dotted key: value}``; the method first, then what applies
    to it."""
    values: dict[str, Any] = {}
    method = None
    for dim in space:
        if dim.keys == (METHOD_NAME,):
            method = values[METHOD_NAME] = dim.suggest(trial)
    for dim in space:
        if dim.keys == (METHOD_NAME,) or (dim.methods is not None and method not in dim.methods):
            continue
        value = dim.suggest(trial)
        values.update(dict.fromkeys(dim.keys, value))
    return values


def assign(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config tree ``tree`` with ``values`` set; a method chosen other than the
    tree's keeps only the tree's method options that it has."""
    tree = copy.deepcopy(tree)
    method = values.get(METHOD_NAME)
    if method is not None:
        section = tree.get("method") or {}
        section = {"name": section} if isinstance(section, str) else dict(section)
        if section.get("name") != method:
            from kdlab.methods import METHODS

            known = {f.name for f in dataclasses.fields(
                METHODS.get(str(method)).for_task(tree.get("task", "classification")).Config)}
            section = {"name": method, **{k: v for k, v in section.items() if k in known}}
        tree["method"] = section
    for key, value in values.items():
        if key == METHOD_NAME:
            continue
        node = tree
        *path, last = key.split(".")
        for part in path:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return tree


def probes(space: Sequence[Dimension], base: RunConfig) -> Iterator[tuple[Dimension, dict]]:
    """(dimension, values) pairs whose configs are checked before the search: each end or
    choice of each dimension, under every method it applies to."""
    methods = next((d.choices for d in space if d.keys == (METHOD_NAME,)), None)
    for dim in space:
        if dim.keys == (METHOD_NAME,):
            for choice in dim.choices:
                yield dim, {METHOD_NAME: choice}
            continue
        for method in dim.methods or methods or (None,):
            for value in dim.probe_values():
                values = dict.fromkeys(dim.keys, value)
                if method is not None:
                    values = {METHOD_NAME: method, **values}
                yield dim, values
