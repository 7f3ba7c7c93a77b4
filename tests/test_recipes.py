"""Every shipped recipe loads, names registered things, and points at a teacher recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlab.config import build_dataclass, load_config
from kdlab.data import DATASETS
from kdlab.methods import METHODS
from kdlab.models import MODELS

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))
ROOT = Path(__file__).parent.parent


def test_recipes_exist():
    assert len(RECIPES) >= 40


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_is_valid(path):
    cfg = load_config(path)
    method = METHODS.get(cfg.method_name)
    build_dataclass(method.Config, cfg.method_options, where=f"method.{cfg.method_name}")
    assert cfg.data.name in DATASETS
    assert cfg.model.student in MODELS, f"{path}: unknown student {cfg.model.student}"
    dataset, method_dir = path.parent.parent.name, path.parent.name
    assert cfg.data.name.startswith(dataset.rstrip("0123456789")) or dataset == cfg.data.name
    assert method_dir == cfg.method_name or method_dir.startswith(cfg.method_name)
    assert cfg.train.out_dir == f"runs/{dataset}/{method_dir}/{path.stem}", "out_dir mirrors path"
    if cfg.model.teacher is not None:
        assert cfg.model.teacher in MODELS
        assert method.needs_teacher, f"{path}: {cfg.method_name} takes no teacher"
        # The teacher checkpoint is produced by a shipped `ce` recipe.
        ckpt = Path(cfg.model.teacher_checkpoint)
        teacher_recipe = ROOT / "recipes" / dataset / "ce" / f"{cfg.model.teacher}.yaml"
        assert ckpt == Path("runs", dataset, "ce", cfg.model.teacher, "best.pt")
        assert teacher_recipe.is_file(), f"{path}: no recipe trains its teacher"
    else:
        assert not method.needs_teacher
