"""Reading recipes: YAML with the number forms users write and no silently repeated keys.

PyYAML follows YAML 1.1, where ``1e-3`` and ``1e30`` (no dot) are strings; YAML 1.2 and
Python read them as numbers, and so does :class:`RecipeLoader`. A key given twice in one
mapping (``optim:`` twice) is an error rather than "the last one wins". Everything else is
``yaml.SafeLoader``: no Python objects are ever built from a recipe.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from kdlab.errors import UserError

#: YAML 1.2 core-schema floats plus Python's forms (``1e-3``, ``1E30``, ``.5``, ``1_000.0``)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice."""


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats and an error on a repeated mapping key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key; the base class reports it
                continue
            if first is not None:
                raise DuplicateKeyError(f"the key {key!r} is given twice (lines {first} and "
                                        f"{line})")
        return super().construct_mapping(node, deep=deep)


# A copy of SafeLoader's resolvers with the float one replaced (SafeLoader stays untouched).
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse ``text`` with :class:`RecipeLoader`; YAML errors propagate (``yaml.YAMLError``)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in a few words with its line and column (PyYAML's text spans lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a file, or a pipe such as ``<(generate_recipe)``, which is
    read once); a folder, a missing path or a binary / non-UTF-8 file is a UserError that names
    ``what`` (e.g. "Recipe")."""
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder, not a YAML file; give the path of "
                        "a .yaml file (see `recipes/` for examples).")
    if not path.exists():
        raise UserError(f"{what} {str(path)!r} does not exist; see `recipes/` for examples.")
    return decode(path.read_bytes(), f"{what} {str(path)!r}")


def read_stdin(what: str) -> str:
    """The UTF-8 text on standard input (a recipe given as ``-``)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError(f"{what} '-' means standard input, but nothing is piped in; pipe a "
                        "recipe (`generate_recipe | kdlab train -`) or give a file.")
    return decode(sys.stdin.buffer.read(), f"{what} on standard input")


def decode(data: bytes, what: str) -> str:
    """``data`` as UTF-8 text; binary or non-UTF-8 bytes are a UserError naming ``what``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} is not UTF-8 text (byte {e.start} cannot be decoded); give a "
                        "YAML text file saved as UTF-8.") from None
    if "\x00" in text:
        raise UserError(f"{what} is a binary file, not YAML text; give a YAML recipe.")
    return text
