"""The documentation: docs/methods.md is what `python -m kdlab.tools.docs_gen` generates from the
registered methods (a stale file fails here), field comments are read from the source, and
the MkDocs site builds with --strict (every page, link and API reference resolves)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from kdlab.tools import docs_gen

ROOT = Path(__file__).resolve().parents[2]


def test_the_method_reference_is_up_to_date():
    committed = (ROOT / "docs" / "methods.md").read_text()
    assert committed == docs_gen.generate(), (
        "docs/methods.md is stale: run `python -m kdlab.tools.docs_gen` and commit the result")


def test_the_reference_has_every_method_its_settings_and_recipes():
    from kdlab.methods import METHODS

    text = docs_gen.generate()
    for name in METHODS.names():
        if METHODS.get(name).__module__.startswith("kdlab."):
            assert f"## `{name}`" in text
    fcfd = text.split("## `fcfd`")[1].split("\n## ")[0]
    assert "| `temperature` | `float` | `4.0` | `> 0` |" in fcfd and "ICLR 2023" in fcfd
    assert "| `teacher_bn` | `str` | `batch` | `eval, batch` |" in fcfd  # the authors' mode
    assert "| `num_paths` | `int \\| str` | `2` | `>= 0 or all` |" in fcfd
    assert "recipes/cifar100/fcfd/" in fcfd
    tasks = text.split("## Task options")[1]
    assert "| `aux_weight` | `float` | `0.4` | `>= 0` |" in tasks.split("### `segmentation`")[1]


def test_field_comments_come_from_the_source():
    @dataclass
    class Config:
        # the first knob
        alpha: float = 1.0
        beta: int = 2  # the second knob
        gamma: str = "x"

    assert docs_gen.field_comments(Config) == {"alpha": "the first knob",
                                               "beta": "the second knob"}


def test_ci_installs_what_the_strict_site_build_needs():
    """The build below skips where mkdocs is missing: CI (.ci/run -> scripts/install.sh)
    installs the [dev] extras, which must bring the [docs] ones."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(d.startswith("kdlab[") and "docs" in d for d in extras["dev"]), extras["dev"]
    assert "install.sh" in (ROOT / ".ci" / "run").read_text()
    assert "-e '.[dev]'" in (ROOT / "scripts" / "install.sh").read_text()


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install 'kdlab[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
         str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    # no -q: it lowers the log level to errors, and --strict then counts no warnings at all
    warnings = [line for line in (result.stdout + result.stderr).splitlines()
                if line.startswith("WARNING")]
    assert result.returncode == 0 and not warnings, "\n".join(warnings) or result.stderr[-3000:]
    assert (tmp_path / "site" / "methods" / "index.html").is_file()
    assert (tmp_path / "site" / "fcfd" / "index.html").is_file()
