"""benchmarks/gpu/coco_table3.sh: its --dry run prints one command per row of FCFD Table 3
that kdlab implements (every COCO recipe but the R-101 trained alone), each loading its
recipe's own weight files from WEIGHTS, the ReviewKD rows on 4 processes x 2 images as their
authors trained; docs/detection.md and benchmarks/gpu/README.md list the same rows."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from kdlab.core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "coco_table3.sh"
COCO = ROOT / "recipes" / "coco"
PAIRS = ["fasterrcnn_resnet18_fpn_from_fasterrcnn_resnet101_fpn",
         "fasterrcnn_resnet50_fpn_from_fasterrcnn_resnet101_fpn",
         "fasterrcnn_mobilenet_v2_fpn_from_fasterrcnn_resnet50_fpn"]
#: Table 3's rows kdlab runs: the students alone, FGFI, Review, FCFD; Table 7's inheriting row
ROWS = ({f"ce/{p.split('_from_')[0]}" for p in PAIRS}
        | {f"{m}/{p}" for m in ("fgfi", "reviewkd", "fcfd") for p in PAIRS}
        | {f"fcfd_inherit/{PAIRS[1]}"})

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "DATA": "/data/coco", "WEIGHTS": "/weights", "PYTHON": "python",
            **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def _commands(*rows: str) -> dict[str, list[str]]:
    """row -> its printed command line, split as the shell would."""
    result = _run("--dry", *rows)
    assert result.returncode == 0, result.stderr
    out = {}
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        recipe = next(w for w in words if w.startswith("recipes/coco/"))
        row = recipe.removeprefix("recipes/coco/").removesuffix(".yaml")
        assert row not in out, f"{row} runs twice"
        out[row] = words
    return out


def _sets(words: list[str]) -> dict[str, str]:
    pairs = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    return dict(p.split("=", 1) for p in pairs)


def test_the_dry_run_has_every_table_3_row_kdlab_implements():
    assert set(_commands()) == ROWS
    every_coco_recipe = {str(p.relative_to(COCO).with_suffix("")) for p in COCO.glob("*/*.yaml")}
    assert every_coco_recipe - ROWS == {"ce/fasterrcnn_resnet101_fpn"}  # the teachers: model zoo


def test_every_command_loads_its_recipes_own_weight_files_from_weights():
    for row, words in _commands().items():
        cfg = load_config(COCO / f"{row}.yaml")
        sets = _sets(words)
        assert sets["data.root"] == "/data/coco"
        assert sets["model.student_pretrained"] == \
            f"/weights/{Path(cfg.model.student_pretrained).name}", row
        verb = words[words.index(f"recipes/coco/{row}.yaml") - 1]
        if cfg.model.teacher:
            assert verb == "distill"
            assert sets["model.teacher_pretrained"] == \
                f"/weights/{Path(cfg.model.teacher_pretrained).name}", row
        else:
            assert verb == "train" and "model.teacher_pretrained" not in sets, row


def test_reviewkd_rows_run_on_4_processes_of_2_images_the_others_on_one_of_8():
    for row, words in _commands().items():
        sets = _sets(words)
        if row.startswith("reviewkd/"):  # ReviewKD Detection/README.md: 4 GPUs, no SyncBN
            assert "--nproc_per_node=4" in words and sets["data.batch_size"] == "2", row
            assert load_config(COCO / f"{row}.yaml").train.sync_bn is False
        else:  # the FCFD authors' single GPU at the recipe's batch of 8
            assert "torch.distributed.run" not in words and "data.batch_size" not in sets, row
    two = _run("--dry", "fcfd/" + PAIRS[0], NPROC="2")
    assert "--nproc_per_node=2" in two.stdout and "data.batch_size=4" in two.stdout


def test_the_script_refuses_a_missing_recipe_data_folder_or_batch_split():
    assert "no recipe recipes/coco/kd/x.yaml" in _run("--dry", "kd/x").stderr
    assert "set DATA" in _run("--dry", DATA="").stderr
    assert "cannot share the batch of 8" in _run("--dry", "ce/fasterrcnn_resnet18_fpn",
                                                  NPROC="3").stderr


def test_the_docs_list_the_scripts_rows():
    docs = (ROOT / "docs" / "detection.md").read_text()
    section = docs[docs.index("### Table 3 on COCO (GPU)"):]
    listed = set(re.findall(r"`((?:ce|fgfi|reviewkd|fcfd|fcfd_inherit)/[a-z0-9_]+)`", section))
    assert listed == ROWS
    assert "benchmarks/gpu/coco_table3.sh" in section and "ICD" in docs
    assert "coco_table3.sh" in (ROOT / "benchmarks" / "gpu" / "README.md").read_text()
