"""The reliability page: what each bad input and injected fault gives through the CLI and the
Python API now.

Runs every case of ``tests/cli/test_reliability.py``'s tables in a fresh temporary folder: the
command-line cases (recipes, settings, checkpoints, data, export destinations, run folders,
plugins, teacher caches, sizes) through ``kdlab.cli.main``, recording the exit status, the
number of stderr lines, whether a traceback or a Python warning appeared and the message; the
Python cases through ``kdlab.distill``, recording the exception type and its message. The
cases that need a fault (kill -9, a full or read-only file system, torchrun, out of memory)
or that are accepted by design are the hand-written part of the page, above those tables,
each with the test that checks it.

    PYTHONPATH=src .venv/bin/python benchmarks/reliability_cases.py

Writes ``benchmarks/results/reliability.md``.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cli"), str(ROOT / "src")]

from test_reliability import API_CASES, CASES, plugin_folder, write_recipe  # noqa: E402

from kdlab.cli import main  # noqa: E402
from kdlab.errors import UserError  # noqa: E402
from support.training import registered  # noqa: E402


def run_case(make, finished: Path) -> tuple[int, list[str], int]:  # noqa: ANN001
    """(exit status, stderr lines, Python warnings) of one command-line case."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = make(Path(tmp), finished)
        err = io.StringIO()
        with (contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()),
              plugin_folder(Path(tmp)), warnings.catch_warnings(record=True) as caught):
            warnings.simplefilter("always")
            code = main(argv)
        shown = [w for w in caught if issubclass(w.category, UserWarning)]
        return code, err.getvalue().strip().splitlines(), len(shown)


def clean(message: str, finished: Path | None = None) -> str:
    if finished is not None:
        message = message.replace(str(finished), "RUN")
    message = re.sub(r"/tmp/[\w/.-]*?tmp\w+", "TMP", message)
    return message.replace("|", "\\|").removeprefix("kdlab: error: ")


def main_table() -> str:
    rows = ["| case | exit | stderr lines | traceback | warnings | message |",
            "|---|---|---|---|---|---|"]
    with registered(), tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        path = write_recipe(base, schedule={"epochs": 1, "milestones": [1]})
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["train", str(path)]) == 0
        finished = base / "run"
        clean_ends = tracebacks = warned = 0
        for name, (make, _) in CASES.items():
            code, lines, shown = run_case(make, finished)
            message = clean(lines[-1] if lines else "", finished)
            traceback = "yes" if any("Traceback" in line for line in lines) else "no"
            rows.append(f"| {name} | {code} | {len(lines)} | {traceback} | {shown} | "
                        f"{message} |")
            clean_ends += code == 2 and len(lines) == 1 and traceback == "no" and not shown
            tracebacks += traceback == "yes"
            warned += bool(shown)
    count = (f"{len(CASES)} cases: {clean_ends} end with exit status 2 and one line, "
             f"{tracebacks} with a traceback, {warned} with a Python warning.\n\n")
    return count + "\n".join(rows) + "\n"


def api_table() -> str:
    rows = ["| case | raises | message |", "|---|---|---|"]
    with registered():
        for name, (call, _) in API_CASES.items():
            with (tempfile.TemporaryDirectory() as tmp,
                  contextlib.redirect_stdout(io.StringIO())):
                try:
                    call(Path(tmp))
                    raised, message = "nothing", ""
                except UserError as e:
                    raised, message = "UserError", str(e)
                except Exception as e:  # noqa: BLE001 - the page records what a bug gives
                    raised, message = type(e).__name__, str(e).splitlines()[0]
            rows.append(f"| {name} | {raised} | {clean(message)} |")
    errors = sum(" | UserError | " in r and "\n" not in r for r in rows)
    count = (f"{len(API_CASES)} cases: {errors} raise one UserError sentence, "
             f"{len(API_CASES) - errors} something else.\n\n")
    return count + "\n".join(rows) + "\n"


MARKER = "## Bad inputs (measured)\n"
API_MARKER = ("## Bad inputs to the Python API (measured: `kdlab.distill`, each a "
              "`kdlab.errors.UserError` of one sentence)\n")


if __name__ == "__main__":
    out = ROOT / "benchmarks" / "results" / "reliability.md"
    written = out.read_text()  # the hand-written part ends at MARKER; the rest is replaced
    out.write_text(written[: written.index(MARKER) + len(MARKER)] + "\n" + main_table()
                   + "\n" + API_MARKER + "\n" + api_table())
    print(f"wrote {out}")
