"""Every shipped recipe loads, names registered things, and points at a teacher recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlab.config import build_dataclass, load_config
from kdlab.data import DATASETS
from kdlab.engine.build import check_model_config
from kdlab.methods import METHODS
from kdlab.models import MODELS, pretrained_models

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))
ROOT = Path(__file__).parent.parent


def test_recipes_exist():
    assert len(RECIPES) >= 40


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_is_valid(path):
    cfg = load_config(path)
    method = METHODS.get(cfg.method_name).for_task(getattr(cfg, "task", "classification"))
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
        # The teacher is produced by a shipped `ce` recipe (a recipe to train one exists
        # either way) or is torchvision's pretrained network, downloaded: no local path.
        teacher_recipe = ROOT / "recipes" / dataset / "ce" / f"{cfg.model.teacher}.yaml"
        assert teacher_recipe.is_file(), f"{path}: no recipe trains its teacher"
        if cfg.model.teacher_pretrained:
            assert cfg.model.teacher_pretrained is True and cfg.model.teacher_checkpoint is None
            assert cfg.model.teacher in pretrained_models()
        else:
            ckpt = Path(cfg.model.teacher_checkpoint)
            assert ckpt == Path("runs", dataset, "ce", cfg.model.teacher, "best.pt")
    else:
        assert not method.needs_teacher
    check_model_config(cfg, weights=False)  # the networks' names; nothing read


def test_the_imagenet_fcfd_pairs_use_torchvision_teachers():
    """FCFD Table 3 distils from torchvision's pretrained ResNet-34 and ResNet-50."""
    for name in ("resnet18_from_resnet34", "mobilenet_v1_from_resnet50"):
        cfg = load_config(ROOT / "recipes" / "imagenet" / "fcfd" / f"{name}.yaml")
        assert cfg.model.teacher_pretrained is True, name
        assert not cfg.model.student_pretrained, name
