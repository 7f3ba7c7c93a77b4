"""Write docs/reproduce.md, the reproduction map, from the recipes' headers.

One row per recipe whose header names a reference implementation by repository and commit
(``owner/repo @ abc1234`` or ``owner/repo@abc1234``): what it stands for (the header's first
sentence), the reference code and commit, the parity level a test backs (step-exact: a
trajectory fixture of tests/methods/test_parity_trajectory.py or, for the Cityscapes SKD and
CWD recipes and the COCO FCFD one, tests/methods/test_parity_trajectory_cirkd.py and
test_parity_trajectory_fcfd_detection.py runs this recipe; loss-exact: a
loss fixture of tests/methods/test_parity.py covers its method and pair; protocol values:
tests/core/test_reference_values.py (COCO, ImageNet SRRL) or tests/core/test_reference_recipes.py
(every Cityscapes recipe) compares its settings with the reference's; Detectron2's network
function: the header names tests/tasks/detection/test_detectron2_parity.py; Detectron2's
losses: it names tests/tasks/detection/test_detector_losses.py), and what
differs (the header's ``Differs:`` or ``Not value for value:`` paragraph) and kdlab's
result (its ``Measured:`` paragraph; benchmarks/gpu/README.md has the commands). No recipe is read
other than through its header comments, so the map follows whatever recipes exist.

Run: python scripts/reproduce_gen.py [--check]   (scripts/recipes_gen.py runs it too)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("docs", "reproduce.md")
sys.path.insert(0, str(ROOT / "benchmarks" / "parity"))

REFERENCE = re.compile(r"([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(?: v[0-9.]+)? ?@ ?([0-9a-f]{7,40})\b")
#: header lines that open a paragraph (the one before them ends there)
LABELS = ("Differs:", "Not value for value:", "Protocol", "Teacher:", "Weights", "Run:",
          "Offline:", "Needs a trained teacher", "(written by", "The teacher is", "Student ",
          "Inheriting", "The frozen teacher", "Measured:")
DIFFERS = ("Differs:", "Not value for value:")
#: the test a header names when its detectors compute Detectron2's function on Detectron2's
#: weight files (Detectron2's own model run on the same weights, stage by stage)
D2_PARITY = "tests/tasks/detection/test_detectron2_parity.py"
#: the test a header names when its student trains with Detectron2's losses (Detectron2's own
#: ``RPN.losses`` and ``FastRCNNOutputLayers.losses`` on stored inputs)
D2_LOSSES = "tests/tasks/detection/test_detector_losses.py"
#: a full stop that ends a sentence (not one of "App. D", "Sec. 4", "Eq. 3", "e.g. ")
SENTENCE_END = re.compile(r"(?<!App)(?<!Sec)(?<!Eq)(?<!Tab)(?<!Fig)(?<!e\.g)(?<!i\.e)\.\s")


@dataclass
class Header:
    """What a recipe's header comments say."""

    lines: list[str]

    @property
    def text(self) -> str:
        """The header as one line (a word broken after a hyphen joined again)."""
        out = ""
        for line in self.lines:
            out += line if out.endswith("-") or not out else " " + line
        return out

    @property
    def cites(self) -> str:
        """The header's first sentence (shortened past 220 characters)."""
        text = self.text
        end = SENTENCE_END.search(text + " ")
        first = text[: end.start() + 1] if end else text
        return first if len(first) <= 220 else first[:217].rsplit(" ", 1)[0] + " ..."

    @property
    def references(self) -> list[str]:
        """``owner/repo @ commit`` (7 hex digits) for every reference the header names."""
        found = REFERENCE.findall(self.text)
        return list(dict.fromkeys(f"{repo} @ {commit[:7]}" for repo, commit in found))

    def paragraph(self, labels: tuple[str, ...]) -> list[str]:
        """The lines of the paragraph(s) that open with one of ``labels``."""
        out, inside = [], False
        for line in self.lines:
            if line.startswith(LABELS):
                inside = line.startswith(labels)
            if inside:
                out.append(line)
        return out

    @property
    def differs(self) -> list[str]:
        """The header's ``Differs:`` (or ``Not value for value:``) paragraph."""
        return self.paragraph(DIFFERS)

    @property
    def measured(self) -> str:
        """The kdlab result the header records (``Measured: ...``), or "needs a GPU"."""
        return " ".join(self.paragraph(("Measured:",))).removeprefix("Measured:").strip() \
            or "needs a GPU"


def read_header(path: Path) -> Header:
    """The comment lines that open a recipe, without their ``#``."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return Header(lines)


def _step_exact() -> dict[str, str]:
    """recipe -> the trajectory case(s) that run it, with the settings they change."""
    import trajectory_setup as TS

    out: dict[str, list[str]] = {}
    for case in TS.CASES.values():
        path = case.recipe_path.relative_to(ROOT).as_posix()
        changed = sorted([*case.options, *case.optim])
        note = f" ({', '.join(changed)} changed)" if changed else ""
        out.setdefault(path, []).append(f"step-exact{note}: `{case.name}`")
    import cirkd_trajectory_setup as CS

    pair = f"{CS.NETWORKS[1]} <- {CS.NETWORKS[0]}"
    for cirkd in CS.CASES.values():
        path = cirkd.recipe_path.relative_to(ROOT).as_posix()
        out.setdefault(path, []).append(f"step-exact (on {pair}): `{cirkd.name}`")
    import fcfd_detection_trajectory_setup as DS

    path = DS.RECIPE.relative_to(ROOT).as_posix()
    out.setdefault(path, []).append(
        f"step-exact (the FCFD terms and solver, on {DS.NETWORKS[1]} <- {DS.NETWORKS[0]}): "
        f"`{DS.NAME}`")
    return {k: "; ".join(v) for k, v in out.items()}


def _loss_exact() -> set[str]:
    fixtures = ROOT / "tests" / "fixtures" / "parity"
    out = set()
    for f in sorted(fixtures.glob("*.json")):
        for method in json.loads(f.read_text())["methods"]:
            out.add(f"recipes/cifar100/{method}/{f.stem}.yaml")
    return out


def parity_levels() -> dict[str, str]:
    """recipe -> the parity level its tests reach."""
    import reference_values as R

    steps, losses = _step_exact(), _loss_exact()
    cityscapes = {p.relative_to(ROOT).as_posix()
                  for p in (ROOT / "recipes" / "cityscapes").glob("*/*.yaml")}
    paths = set(steps) | losses | set(R.REFERENCE) | cityscapes
    out = {}
    for p in paths:
        levels = [steps[p]] if p in steps else []
        if p in losses:
            levels.append("loss-exact")
        if p in R.REFERENCE:
            levels.append("protocol values" + (" (with named differences)"
                                               if R.DIFFERS.get(p) else ""))
        if p in cityscapes:
            levels.append("protocol values (CIRKD's table)")
        out[p] = "; ".join(levels)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(root: Path = ROOT) -> str:
    """The text of docs/reproduce.md."""
    levels = parity_levels()
    out = [
        "# Reproduction map",
        "",
        "<!-- generated by scripts/reproduce_gen.py from the recipes' headers: do not edit -->",
        "",
        "One row per recipe that stands for a published number: the reference code that "
        "produced it (repository @ commit), the parity level a test holds kdlab to, and what "
        "still differs. **Step-exact**: kdlab's training steps follow the reference's own loop "
        "on copied weights (tests/methods/test_parity_trajectory.py; CIRKD's loop, with a "
        "Cityscapes recipe's settings on kdlab's CPU segmentation pair: "
        "tests/methods/test_parity_trajectory_cirkd.py; the FCFD authors' detection "
        "distiller under Detectron2's trainer step, with the COCO recipe's settings on "
        "kdlab's tiny detectors: tests/methods/test_parity_trajectory_fcfd_detection.py; "
        "benchmarks/results/parity.md). **Loss-exact**: every loss term equals the "
        "reference's on one batch (tests/methods/test_parity.py). **Protocol values**: every "
        "training setting equals the reference's value, file and commit named in "
        "benchmarks/parity/reference_values.py (tests/core/test_reference_values.py) or in "
        "tests/core/test_reference_recipes.py's tables (Cityscapes, CIRKD). **Detectron2's "
        "network function**: the recipe's detectors, loaded from a Detectron2 weight file, "
        "compute what Detectron2 v0.6 computes with it, stage by stage "
        "(tests/tasks/detection/test_detectron2_parity.py). **Detectron2's losses**: the "
        "student's RPN and box losses (`losses: detectron2`) equal Detectron2 v0.6's own on "
        "stored inputs (tests/tasks/detection/test_detector_losses.py). A kdlab "
        "result is the full run of the recipe (its `Run:` line), written into its header as "
        "`Measured: ...`; benchmarks/gpu/README.md gives the commands.",
        "",
    ]
    recipes = sorted((root / "recipes").glob("*/*/*.yaml"))
    groups: dict[str, list[Path]] = {}
    for path in recipes:
        if read_header(path).references:
            groups.setdefault(path.parts[-3], []).append(path)
    for dataset, paths in groups.items():
        out += [f"## {dataset}", "",
                "| recipe | stands for | reference | parity | what differs | kdlab result |",
                "|---|---|---|---|---|---|"]
        for path in paths:
            rel = path.relative_to(root).as_posix()
            h = read_header(path)
            differs = " ".join(h.differs) or "none written"
            level = levels.get(rel, "not tested")
            if D2_PARITY in h.text:  # the networks run Detectron2's function on its files
                level += f"; Detectron2's network function (`{D2_PARITY}`)"
            if D2_LOSSES in h.text:  # the student trains with Detectron2's losses
                level += f"; Detectron2's losses (`{D2_LOSSES}`)"
            row = [f"`{rel.removeprefix('recipes/')}`", h.cites, ", ".join(h.references),
                   level, differs, h.measured]
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out.append("")
    return "\n".join(out)


def stale(root: Path = ROOT) -> bool:
    target = root / OUT
    return not target.is_file() or target.read_text(encoding="utf-8") != render(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/reproduce.md is stale")
    args = ap.parse_args(argv)
    if args.check:
        if stale():
            print(f"out of date: {OUT}")
            return 1
        return 0
    (ROOT / OUT).write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
