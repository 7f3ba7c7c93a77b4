"""The values a setting accepts: an interval of numbers, a few named choices, or both.

A :class:`Domain` is declared on the setting's dataclass field with
:func:`kdlab.core.settings.setting` and read from a short text: ``"> 0"``, ``">= 1"``,
``"< 1"``, ``"<= 1"``, an interval such as ``"[0, 1)"`` or ``"(0, 1]"``, or ``"any"`` (any
finite number: a stage index that only the built networks can bound). Choices are the
strings a setting may name besides numbers (``eval``/``batch``, or ``all`` beside a count).
``null`` (automatic) and booleans are never checked here, a list is checked item by item, and
non-finite floats are refused when the config is read (:func:`kdlab.core.config.build_dataclass`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kdlab.errors import UserError

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_BOUND = re.compile(rf"^(>=|<=|>|<)\s*{_NUMBER}$")
_INTERVAL = re.compile(rf"^([\[(])\s*{_NUMBER}\s*,\s*{_NUMBER}\s*([\])])$")


@dataclass(frozen=True)
class Domain:
    """``low``/``high`` bounds (None = unbounded), open or closed; ``numbers`` False when only
    the ``choices`` are allowed; ``text`` is the declaration, as the method reference shows it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    numbers: bool = True
    choices: tuple[str, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, range: str | None = None, choices: Sequence[str] = ()) -> Domain:
        """The domain of a ``range`` text (see the module) and/or ``choices``; a text that is
        not one of those forms is a ValueError (a mistake in kdlab's code, not the user's)."""
        choices = tuple(choices)
        shown = [range] if range is not None else []
        if choices:
            shown.append(", ".join(choices))
        text = " or ".join(shown)  # e.g. "> 0", "eval, batch", ">= 0 or all"
        if range is None:
            if not choices:
                raise ValueError("a setting's domain needs a range, choices or both")
            return cls(numbers=False, choices=choices, text=text)
        spec = range.strip()
        if spec == "any":
            return cls(choices=choices, text=text)
        bound = _BOUND.match(spec)
        if bound:
            op, value = bound.group(1), float(bound.group(2))
            if op.startswith(">"):
                return cls(low=value, low_open=op == ">", choices=choices, text=text)
            return cls(high=value, high_open=op == "<", choices=choices, text=text)
        interval = _INTERVAL.match(spec)
        if interval:
            left, low, high, right = interval.groups()
            return cls(low=float(low), high=float(high), low_open=left == "(",
                       high_open=right == ")", choices=choices, text=text)
        raise ValueError(f"unknown range {range!r}: use '> x', '>= x', '< x', '<= x', "
                         "'[a, b)' (any brackets) or 'any'")

    def __contains__(self, value: float) -> bool:
        if not self.numbers or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None
                    and (value >= self.high if self.high_open else value > self.high))

    def _interval(self) -> str:
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

    def __str__(self) -> str:
        names = list(self.choices)
        if self.numbers:
            names.append(("a number " if names else "") + self._interval())
        if len(names) == 1:
            return names[0]
        return f"{', '.join(names[:-1])} or {names[-1]}"

    def check(self, value: Any, where: str) -> None:
        """A UserError naming ``where`` if ``value`` (a number, a string, a list of them or
        None) is outside the domain."""
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                self.check(item, f"{where}[{i}]")
            return
        if isinstance(value, str):
            if self.choices and value not in self.choices:
                raise UserError(f"{where} {value!r} is not known; use {self}.")
            return
        if isinstance(value, (int, float)) and value not in self:
            raise UserError(f"{where} must be {self}, got {value!r}.")
