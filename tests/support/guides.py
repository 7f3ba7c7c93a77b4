"""Running the docs' guides as written: the files their code blocks name (a block whose first
line is ``# <path>``), their ``kdlab`` commands, and a plugin folder imported into the test
process and removed afterwards."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def guide_files(guide: str) -> dict[str, str]:
    """``{path: text}`` of the code blocks of ``docs/<guide>`` whose first line is
    ``# <path>``."""
    text = (ROOT / "docs" / guide).read_text()
    return dict(re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", text, re.S))


def guide_commands(guide: str) -> list[list[str]]:
    """The ``kdlab ...`` commands of the bash blocks of ``docs/<guide>`` (a line ending in a
    backslash continues on the next), split into words."""
    text = (ROOT / "docs" / guide).read_text()
    bash = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line for block in bash for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("kdlab ")]


def write_guide_files(guide: str, folder: Path) -> list[str]:
    """Write the files of ``docs/<guide>`` under ``folder``; their paths."""
    files = guide_files(guide)
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(body)
    return list(files)


def run_kdlab(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``python -m kdlab ARGS`` in ``cwd`` (on the PYTHONPATH, for its plugin folders)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(cwd), str(ROOT / "src")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "kdlab", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@contextlib.contextmanager
def imported_plugin(folder: Path, module: str) -> Iterator[ModuleType]:
    """``module`` (a plugin under ``folder``) imported in this process; afterwards its
    modules are gone and the registries hold kdlab's own entries only, for the other tests."""
    from kdlab.data import DATASETS
    from kdlab.methods import METHODS
    from kdlab.models import MODELS
    from kdlab.tasks import TASKS

    registries = (TASKS, DATASETS, MODELS, METHODS)
    saved = []
    for registry in registries:
        registry.names()  # filled now, so that the saved entries are kdlab's own
        saved.append(dict(registry._entries))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))
        for registry, entries in zip(registries, saved, strict=True):
            registry._entries.clear()
            registry._entries.update(entries)
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            del sys.modules[name]
