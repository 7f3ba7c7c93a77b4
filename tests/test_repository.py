"""What the repository itself holds: committed results, docs and recipes name no path of the
machine they were made on (a virtual environment under /work/..., a temporary folder under
/tmp/..., a home folder), only paths relative to the repository or bare command names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["benchmarks", "docs", "recipes", "README.md"]

#: an absolute path into a machine's own folders; not part of a URL or a longer path
#: (``https://host/home/...``, ``~/work/...``) and not a regular expression (``/tmp/[\w]``)
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|tmp|home|Users|root|mnt|scratch)/[\w.-]")


def _text_files(top: Path) -> list[Path]:
    files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    return [p for p in files if "__pycache__" not in p.parts]


def machine_paths(paths: list[Path], root: Path = ROOT) -> list[str]:
    """``file:line: text`` (``file`` relative to ``root``) for every line of ``paths`` (text
    files) that names a machine path."""
    found = []
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:  # a binary file (an image, a checkpoint)
            continue
        for number, line in enumerate(lines, 1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()[:160]}")
    return found


def test_no_machine_paths_in_results_docs_or_recipes():
    found = machine_paths([f for top in CHECKED for f in _text_files(ROOT / top)])
    assert not found, ("machine paths (write them relative to the repository, or the bare "
                       "command name):\n" + "\n".join(found))


@pytest.mark.parametrize("line, flagged", [
    ("- kd seed 1: `/work/main/.venv/bin/kdlab distill recipes/x.yaml`", True),
    ("# command: kdlab bench --out /tmp/bp_runs/bench.csv", True),
    ("see /home/alice/runs/kd-1", True),
    ('re.sub(r"/tmp/[\\w/.-]*?tmp\\w+", "TMP", message)', False),
    ("https://github.com/home/work/tmp", False),
    ("kdlab distill recipes/cifar100/kd/resnet8x4_from_resnet32x4.yaml --out runs/kd", False),
])
def test_the_check_finds_machine_paths_and_only_those(tmp_path, line, flagged):
    sample = tmp_path / "results.md"
    sample.write_text(f"first line\n{line}\n")
    found = machine_paths([sample], root=tmp_path)
    assert found == ([f"results.md:2: {line}"] if flagged else [])
