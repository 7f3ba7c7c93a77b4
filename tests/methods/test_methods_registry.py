"""Registry-wide contracts that complement tests/methods/test_every_method.py (which trains every
method a few steps): every method builds from its Config's defaults, is named by a shipped
recipe, rejects unknown options, and a combinable method's ``losses()`` hook gives exactly
the distillation terms its own ``forward()`` gives (so it behaves the same inside a combo)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_staged
from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.base import Batch
from kdlab.tasks import build_task
from support.detection import scenes
from support.detection import tiny_pair as tiny_detectors
from support.segmentation import seg_batch, seg_task, tiny_seg_pair

ROOT = Path(__file__).resolve().parents[2]
#: the smallest option changes a method needs to build on the tiny pair (explicit, per method)
TINY_OPTIONS: dict[str, dict] = {
    "crd": {"num_negatives": 8, "feat_dim": 16, "negatives": "uniform"},  # no labels here
    "online_fcfd": {"teacher": "resnet8"},
}


def _home_task(cls) -> str:
    """The task a method is tested on here: classification where it runs, else its first."""
    return "classification" if cls.runs_on("classification") else cls.tasks[0]


def _pair(cls):
    """(student, teacher) for the method's home task."""
    home = _home_task(cls)
    if home == "segmentation":
        teacher, student = tiny_seg_pair()
        return student, teacher
    if home == "detection":
        teacher, student = tiny_detectors()
        return student, teacher
    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1) if cls.needs_teacher else None
    return tiny_staged(widths=(8, 16, 32, 32), seed=2), teacher


def _task(cls):
    home = _home_task(cls)
    return None if home == "classification" else (
        seg_task() if home == "segmentation" else build_task("detection"))


def _batch(cls):
    """Six images and their targets (two scenes for a detector) for the home task."""
    home = _home_task(cls)
    if home == "segmentation":
        return seg_batch(6)
    if home == "detection":
        return scenes(batch=2, seed=3)
    g = torch.Generator().manual_seed(3)
    return torch.randn(6, 3, 16, 16, generator=g), torch.arange(6) % 10


def _recipe_methods() -> set[str]:
    names = set()
    for path in (ROOT / "recipes").rglob("*.yaml"):
        method = (yaml.safe_load(path.read_text()) or {}).get("method") or {}
        names.add(method.get("name"))
    return names


@pytest.mark.parametrize("name", METHODS.names())
def test_method_has_a_recipe(name):
    assert name in _recipe_methods(), f"no recipe under recipes/ uses method {name!r}"


@pytest.mark.parametrize("name", METHODS.names())
def test_method_builds_and_checks_its_options(name):
    cls = METHODS.get(name)
    student, teacher = _pair(cls)
    task = _task(cls)
    d = build_distiller(name, TINY_OPTIONS.get(name, {}), student, teacher, train_size=64,
                        task=task)
    assert isinstance(d.cfg, cls.Config)
    with pytest.raises(UserError, match="Unknown key"):
        build_distiller(name, {"no_such_option": 1}, student, teacher, train_size=64, task=task)


COMBINABLE = [n for n in METHODS.names() if getattr(METHODS.get(n), "combinable", False)]


@pytest.mark.parametrize("name", COMBINABLE)
def test_losses_hook_matches_forward(name):
    cls = METHODS.get(name)
    student, teacher = _pair(cls)
    d = build_distiller(name, TINY_OPTIONS.get(name, {}), student, teacher, train_size=64,
                        task=_task(cls))
    d.eval()  # deterministic BN: both paths see the same features
    x, y = _batch(cls)
    index = torch.arange(len(x))
    # stateful methods (CRD's memory bank) start both calls equal (not a deepcopy: OFD's
    # taps hook the original networks)
    state = copy.deepcopy(d.state_dict())
    torch.manual_seed(0)
    _, terms = d(x, y, index)
    d.load_state_dict(state)
    torch.manual_seed(0)
    batch = Batch(x, y, index)
    s = d.student_pass(batch)
    hooked = d.losses(batch, s, d.teacher_pass(batch, s))
    assert set(hooked) == set(terms) - {"ce"}
    for term, value in hooked.items():
        torch.testing.assert_close(value, terms[term])


#: every method that distils from a frozen teacher, on each task it runs here
FROZEN_TEACHER = [
    (n, _home_task(METHODS.get(n)))
    for n in METHODS.names() if METHODS.get(n).needs_teacher
    and not METHODS.get(n).trains_teacher
] + [("kd", "segmentation"), ("combo", "segmentation")]


@pytest.mark.parametrize(("name", "task"), FROZEN_TEACHER)
def test_the_frozen_teacher_runs_once_per_step_under_inference_mode(name, task):
    """The teacher's first layer runs once per training step (every term reads the one pass),
    under ``torch.inference_mode``, and a backward through the terms works (what they saved
    for it was cloned out of inference mode)."""
    cls = METHODS.get(name)
    if task == "segmentation":
        teacher, student = tiny_seg_pair()
        x, y = seg_batch(6)
        options = {"parts": [{"name": "kd"}, {"name": "cwd"}]} if name == "combo" else {}
        built_for = seg_task()
    else:
        student, teacher = _pair(cls)
        x, y = _batch(cls)
        options = TINY_OPTIONS.get(name, {})
        built_for = _task(cls)
    d = build_distiller(name, options, student, teacher, train_size=64, task=built_for)
    d.train()
    first = next(m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d))
    calls: list[bool] = []
    first.register_forward_pre_hook(
        lambda *_: calls.append(torch.is_inference_mode_enabled()))
    _, terms = d(x, y, torch.arange(len(x)))
    sum(terms.values()).backward()
    assert calls == [True], f"{name}: teacher's first layer ran {calls} (inference mode)"
