"""The Distiller base: the frozen teacher is outside parameters/state, eval mode, moved along."""

from __future__ import annotations

import copy

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.base import Batch
from kdlab.tasks import build_task
from support.detection import tiny_pair as tiny_detectors
from support.segmentation import seg_task


def test_teacher_is_frozen_and_outside_the_trainable_state(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("kd", {}, student, teacher)
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())
    assert not any(k.startswith("teacher") or "_teacher" in k for k in d.state_dict())
    assert all(not p.requires_grad for p in teacher.parameters())
    d.train()
    assert d.training and student.training and not teacher.training
    d.double()  # _apply reaches the teacher too
    assert next(teacher.parameters()).dtype == torch.float64


def test_teacher_features_carry_no_graph(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("kd", {}, student, teacher)
    out = d.teacher_source.features(Batch(torch.randn(2, 3, 16, 16)))
    assert not out.logits.requires_grad and out.logits.grad_fn is None
    # usable as a saved target in an autograd graph (cloned out of inference mode)
    z = torch.randn(2, 10, requires_grad=True)
    torch.nn.functional.mse_loss(z, out.logits).backward()
    assert z.grad is not None


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).needs_teacher])
def test_methods_that_need_a_teacher_refuse_to_build_without_one(tiny_pair, name):
    _, student = tiny_pair
    method = METHODS.get(name)
    if method.runs_on("classification"):
        task = None
    elif method.runs_on("segmentation"):
        task = seg_task()
    else:
        task, student = build_task("detection"), tiny_detectors()[1]
    with pytest.raises(UserError, match="needs a teacher"):
        build_distiller(name, {}, student, None, task=task)


def test_teacher_bn_batch_uses_batch_statistics_and_leaves_the_teacher_alone(tiny_pair):
    teacher, student = tiny_pair
    x = torch.randn(4, 3, 16, 16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = build_distiller("ofd", {"teacher_bn": "batch"}, student, teacher)
    d.train()
    got = d.teacher_source.features(Batch(x)).logits
    assert not teacher.training  # still an eval-mode network outside the block
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics untouched
    reference = copy.deepcopy(teacher).train()
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(got, expected)
    evaluated = build_distiller("ofd", {"teacher_bn": "eval"}, student,
                                teacher).teacher_source.features(Batch(x)).logits
    assert not torch.allclose(got, evaluated)  # eval mode is a different function


def test_teacher_bn_rejects_unknown_modes(tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(UserError, match="teacher_bn"):
        build_distiller("ofd", {"teacher_bn": "train"}, student, teacher)
