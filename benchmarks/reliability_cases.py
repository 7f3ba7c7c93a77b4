"""The reliability page: what each bad input and injected fault gives through the CLI now.

Runs every case of ``tests/cli/test_reliability.py``'s table (recipes, settings, checkpoints,
data, export destinations, run folders) in a fresh temporary folder through
``kdlab.cli.main`` and records the exit status, the number of stderr lines, whether a
traceback appeared and the message. The cases that need a fault (kill -9, a full or
read-only file system, torchrun, out of memory) are the hand-written part of the page,
above that table, each with the test that checks it.

    PYTHONPATH=src .venv/bin/python benchmarks/reliability_cases.py

Writes ``benchmarks/results/reliability.md``.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cli"), str(ROOT / "src")]

from test_reliability import CASES, write_recipe  # noqa: E402

from kdlab.cli import main  # noqa: E402
from support.training import registered  # noqa: E402


def run_case(make, finished: Path) -> tuple[int, list[str]]:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        argv = make(Path(tmp), finished)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        return code, err.getvalue().strip().splitlines()


def main_table() -> str:
    rows = ["| case | exit | stderr lines | traceback | message |", "|---|---|---|---|---|"]
    with registered(), tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        path = write_recipe(base, schedule={"epochs": 1, "milestones": [1]})
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", str(path)]) == 0
        finished = base / "run"
        for name, (make, _) in CASES.items():
            code, lines = run_case(make, finished)
            message = lines[-1] if lines else ""
            message = message.replace(str(finished), "RUN")
            message = re.sub(r"/tmp/[\w/.-]*?tmp\w+", "TMP", message)
            message = message.replace("|", "\\|").removeprefix("kdlab: error: ")
            traceback = "yes" if any("Traceback" in line for line in lines) else "no"
            rows.append(f"| {name} | {code} | {len(lines)} | {traceback} | {message} |")
    return "\n".join(rows) + "\n"


MARKER = "## Bad inputs (measured)\n"


if __name__ == "__main__":
    out = ROOT / "benchmarks" / "results" / "reliability.md"
    written = out.read_text()  # the hand-written part ends at MARKER; the rest is replaced
    out.write_text(written[: written.index(MARKER) + len(MARKER)] + "\n" + main_table())
    print(f"wrote {out}")
