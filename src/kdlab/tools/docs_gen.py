"""Generate the method reference, ``docs/methods.md``, from the registered methods.

Each method's page section comes from the code, so it cannot drift: the class docstring (the
paper, what the method does), the tasks it serves, whether it needs a teacher, can be part of
a ``combo`` and distils stage-free networks, and a table of its ``Config`` settings with type,
default, the values it accepts (the range or choices declared on the field,
:mod:`kdlab.core.settings`) and the comment written beside the field in the source; then the
recipes that use it. A last section shows each task's ``task_options`` the same way.
``tests/tools/test_docs.py`` fails when the committed file differs from what this writes.

Run from the repository root: ``python -m kdlab.tools.docs_gen`` (``--check`` only compares).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import sys
import tokenize
from pathlib import Path
from typing import Any

import yaml

from kdlab.core.settings import domain_of

ROOT = Path(__file__).resolve().parents[3]  # src/kdlab/tools/docs_gen.py -> the repository
TARGET = ROOT / "docs" / "methods.md"
RECIPES = ROOT / "recipes"


#: what the settings many methods share mean, where a method's source has no comment of its own
COMMON = {
    "ce_weight": "weight of the task's label loss (cross-entropy); 0 turns it off",
    "kd_weight": "weight of the KL divergence to the teacher's softened outputs",
}


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the source of dataclass ``cls``: the comment at the end of a
    field's line, else the full-line comments right above it. Fields a Config inherits keep
    their base class's comments."""
    comments: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            comments.update(_own_field_comments(base))
    comments.update(_own_field_comments(cls))
    return comments


def _own_field_comments(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []
    tokens = list(tokenize.generate_tokens(io.StringIO(inspect.cleandoc(source)).readline))
    line_tokens: dict[int, list[tokenize.TokenInfo]] = {}
    for tok in tokens:
        line_tokens.setdefault(tok.start[0], []).append(tok)
    for _, toks in sorted(line_tokens.items()):
        kinds = [t for t in toks if t.type not in (tokenize.NL, tokenize.NEWLINE,
                                                   tokenize.INDENT, tokenize.DEDENT)]
        if not kinds:
            continue
        if kinds[0].type == tokenize.COMMENT:
            above.append(kinds[0].string.lstrip("#").strip())
            continue
        if (len(kinds) >= 2 and kinds[0].type == tokenize.NAME and kinds[1].string == ":"
                and kinds[0].start[1] > 0):
            trailing = [t.string.lstrip("#").strip() for t in kinds if t.type == tokenize.COMMENT]
            text = " ".join(trailing) if trailing else " ".join(above)
            if text:
                comments[kinds[0].string] = text
        above = []
    return comments


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return yaml.safe_dump(value, default_flow_style=True, width=200).strip().removesuffix(
        "\n...").removesuffix("...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table(config: type) -> list[str]:
    if not dataclasses.is_dataclass(config) or not dataclasses.fields(config):
        return ["No settings."]
    comments = field_comments(config)
    lines = ["| setting | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(config):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"| `{f.name}` | `{_cell(kind)}` | `{_cell(_default(f))}` | "
                     f"{_allowed(f)} | {_cell(comments.get(f.name, COMMON.get(f.name, '')))} |")
    return lines


def _allowed(f: dataclasses.Field) -> str:
    """The values a setting accepts, as declared on its field (``setting(range=...,
    choices=...)``, :mod:`kdlab.core.settings`); empty when its type says it all."""
    domain = domain_of(f)
    return f"`{_cell(domain.text)}`" if domain is not None else ""


def recipes_by_method(root: Path = RECIPES) -> dict[str, list[str]]:
    """``{method: [recipe paths relative to the repository]}``, a combo's parts included."""
    found: dict[str, list[str]] = {}
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*.yaml")):
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        method = tree.get("method") if isinstance(tree, dict) else None
        names: list[str] = []
        if isinstance(method, str):
            names = [method]
        elif isinstance(method, dict):
            names = [str(method.get("name", "ce"))]
            names += [str(p.get("name")) for p in method.get("parts") or []
                      if isinstance(p, dict) and p.get("name")]
        for name in dict.fromkeys(names):
            found.setdefault(name, []).append(str(path.relative_to(root.parent)))
    return found


def _recipes(paths: list[str]) -> list[str]:
    if not paths:
        return ["Recipes: none yet."]
    groups: dict[str, list[str]] = {}
    for p in paths:
        folder, _, name = p.rpartition("/")
        groups.setdefault(folder, []).append(name.removesuffix(".yaml"))
    lines = ["Recipes:", ""]
    lines += [f"- `{folder}/`: {', '.join(names)}" for folder, names in groups.items()]
    return lines


def method_section(name: str, cls: type, recipes: list[str]) -> list[str]:
    doc = inspect.cleandoc(cls.__doc__ or "").strip()
    yes = {True: "yes", False: "no"}
    lines = [f"## `{name}`", "", f"`{cls.__module__}.{cls.__name__}`", ""]
    if doc:
        lines += [doc, ""]
    lines += [f"- tasks: {', '.join(cls.tasks)}",
              f"- needs a teacher: {yes[bool(cls.needs_teacher)]}",
              f"- combinable (part of a `combo`): {yes[bool(cls.combinable)]}",
              f"- distils networks without stages (ViTs): {yes[not cls.uses_stages]}", ""]
    lines += settings_table(cls.Config) + [""]
    config_doc = inspect.cleandoc(getattr(cls.Config, "__doc__", None) or "").strip()
    if config_doc and not config_doc.startswith(f"{cls.Config.__name__}("):  # not dataclass's
        lines += [config_doc, ""]
    lines += _recipes(recipes) + [""]
    return lines


def task_options_section() -> list[str]:
    """The settings of each task kdlab registers (``Task.Options``), as a method's are shown."""
    from kdlab.tasks import TASKS

    lines = ["## Task options", "",
             "A run's `task_options` are the settings of its `task`, e.g. "
             "`task_options: {aux_weight: 0.4}` or `--set task_options.window=512`.", ""]
    for name in TASKS.names():
        task = TASKS.get(name)
        if task.__module__.startswith("kdlab."):
            lines += [f"### `{name}`", "", *settings_table(task.Options), ""]
    return lines


def generate() -> str:
    """The text of docs/methods.md for the methods and tasks kdlab itself registers."""
    from kdlab.methods import METHODS

    recipes = recipes_by_method()
    names = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("kdlab.")]
    lines = ["# Method reference", "",
             "Generated by `python -m kdlab.tools.docs_gen` from each method's docstring and "
             "`Config` dataclass; do not edit by hand (a test fails when it is stale).",
             "Every setting goes in the recipe's `method:` block, e.g. "
             "`method: {name: kd, temperature: 4}`, or on the command line with "
             "`--set method.temperature=4`.", "",
             "| method | summary |", "|---|---|"]
    for n in names:
        first = (inspect.cleandoc(METHODS.get(n).__doc__ or "").strip().splitlines() or [""])[0]
        lines.append(f"| [`{n}`](#{n}) | {_cell(first)} |")
    lines.append("")
    for n in names:
        lines += method_section(n, METHODS.get(n), recipes.get(n, []))
    lines += task_options_section()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdlab.tools.docs_gen", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when docs/methods.md is stale, write nothing")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = TARGET.read_text() if TARGET.is_file() else ""
        if current != text:
            print(f"{TARGET} is stale; run `python -m kdlab.tools.docs_gen`.", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__: list[Any] = ["generate", "field_comments", "recipes_by_method", "main"]
