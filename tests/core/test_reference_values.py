"""Recipes that stand for a published number hold the reference code's values
(benchmarks/parity/reference_values.py names the file and commit of each); every value they do
not hold is listed there with its reason and named in the recipe header's ``Differs:``."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from kdlab.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))
import reference_values as R  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_gen  # noqa: E402


def _setting(cfg: Any, key: str) -> Any:
    """A recipe's value of ``section.name`` (``method.*`` from its method options;
    ``model.student_options.x`` inside that option dict), or the marker ``MISSING`` where
    kdlab has no such setting."""
    section, name = key.split(".", 1)
    if section == "method":
        return cfg.method_options.get(name, MISSING)
    field, _, option = name.partition(".")
    value = getattr(getattr(cfg, section), field, MISSING)
    return value.get(option, MISSING) if option and isinstance(value, dict) else value


MISSING = object()
CASES = [(path, key) for path, values in R.REFERENCE.items() for key in sorted(values)]


@pytest.mark.parametrize(("path", "key"), CASES)
def test_recipe_value_is_the_references_or_a_named_difference(path, key):
    cfg = load_config(ROOT / path)
    want, source = R.REFERENCE[path][key]
    got = _setting(cfg, key)
    differs = R.DIFFERS.get(path, {})
    if key in differs:
        assert got != want, f"{path}: {key} now matches {source}; drop it from DIFFERS"
        return
    assert got is not MISSING, f"{path}: kdlab has no {key} (the reference's: {source})"
    assert got == want, f"{path}: {key} is {got!r}, the reference's {want!r} ({source})"


@pytest.mark.parametrize("path", sorted(R.REFERENCE))
def test_the_header_names_what_differs_and_the_reference_commit(path):
    header = reproduce_gen.read_header(ROOT / path)
    differs = " ".join(header.differs)
    for key in R.DIFFERS.get(path, {}):
        words = {"schedule.iterations": "iterations", "schedule.milestones": "steps"}
        assert words.get(key, key.split(".")[-1]) in differs, (path, key)
    commits = {m[:7] for _, source in R.REFERENCE[path].values()
               for m in re.findall(r"@ ([0-9a-f]{40})", source)}
    named = " ".join(header.references)
    assert commits and all(c in named for c in commits), (path, commits, named)


def test_every_difference_is_of_a_setting_in_the_table():
    for path, keys in R.DIFFERS.items():
        assert set(keys) <= set(R.REFERENCE[path]), path


def test_docs_reproduce_md_is_what_the_generator_writes():
    assert not reproduce_gen.stale(), (
        "docs/reproduce.md is stale: run `python scripts/reproduce_gen.py` and commit it")
