"""One small registry class for models, methods, datasets and tasks.

A registry is filled by the packages that register its entries (``filled_by``): on its first
lookup it imports each of them with all their modules
(:func:`kdlab.core.autoimport.import_package`). So a registry is complete whoever reads it
first, and the layer that defines it never imports the layers above that fill it:
``kdlab.models.MODELS`` is filled by ``kdlab.models`` (the CIFAR zoo, torchvision, timm) and by
``kdlab.tasks`` (each task's own networks, e.g. the detectors), the way a plugin fills it from
outside kdlab (:mod:`kdlab.core.plugins`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from kdlab.core.autoimport import import_package
from kdlab.errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, known: list[str]) -> str:
    """A ' Did you mean ...?' suffix listing the closest known names, or '' if none is close."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


class DuplicateNameError(ValueError):
    """A name registered twice; :attr:`first` and :attr:`second` are the modules of the two
    entries that claim it (a plugin turns it into one sentence, :mod:`kdlab.core.plugins`)."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind, self.name, self.first, self.second = kind, name, first, second
        super().__init__(f"{kind} {name!r} is registered twice: by {first} and by {second}")


def _module_of(obj: object) -> str:
    """The module that defines ``obj`` (for messages); ``?`` when it does not say."""
    return str(getattr(obj, "__module__", None) or "?")


class Registry(Generic[T]):
    """Maps names to builders. A duplicate name is an error; an unknown name suggests close ones.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(): ...

    ``filled_by``: the packages (dotted names) whose modules register the entries; each is
    imported, with every module below it, before the first lookup answers.
    """

    def __init__(self, kind: str, *, filled_by: Sequence[str] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], T]] = {}
        self._unfilled = tuple(filled_by)

    def _fill(self) -> None:
        """Import the packages that register the entries (once; a failed import is retried
        at the next lookup)."""
        if not self._unfilled:
            return
        packages, self._unfilled = self._unfilled, ()  # a lookup made while importing answers
        try:
            for package in packages:
                import_package(package)
        except BaseException:
            self._unfilled = packages
            raise

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def add(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}")
            if key in self._entries:
                raise DuplicateNameError(self.kind, key, _module_of(self._entries[key]),
                                         _module_of(obj))
            self._entries[key] = obj
            return obj

        return add

    def register_prefix(self, prefix: str, resolve: Callable[[str], T]) -> None:
        """Resolve every name ``prefix + rest`` that is not registered with ``resolve(rest)``
        (e.g. ``timm/`` for any timm network); ``resolve`` raises UserError for an unknown
        ``rest``. Such names are not listed by :meth:`names`."""
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} is registered twice")
        self._prefixes[prefix] = resolve

    def prefixes(self) -> list[str]:
        self._fill()
        return sorted(self._prefixes)

    def get(self, name: str) -> T:
        self._fill()
        if name in self._entries:
            return self._entries[name]
        for prefix, resolve in self._prefixes.items():
            if isinstance(name, str) and name.startswith(prefix):
                return resolve(name[len(prefix):])
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(str(name), self.names())} "
                f"Run `kdlab list {self.kind}s` to see them all."
            ) from None

    def names(self) -> list[str]:
        self._fill()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._fill()
        if name in self._entries:
            return True
        if isinstance(name, str) and any(name.startswith(p) for p in self._prefixes):
            try:
                self.get(name)
            except UserError:
                return False
            return True
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._fill()
        return len(self._entries)
