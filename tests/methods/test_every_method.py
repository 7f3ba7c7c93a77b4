"""Every registered method, generically: a few CPU steps on a fixed batch lower its loss,
every term stays finite, the frozen teacher (no parameter requiring a gradient, in eval mode)
gets no gradient at any step and does not change, and the student does get gradients; a
feature method refuses teacher features of another batch size. A new method is tested here by
default; a method's own behaviour is tested in its folder
(tests/methods/<method>/)."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import sgd_descent, tiny_staged
from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.base import Batch

#: the smallest option changes a method needs to run on the tiny pair (explicit, per method)
TINY_OPTIONS: dict[str, dict] = {
    "crd": {"num_negatives": 8, "feat_dim": 16, "negatives": "uniform"},  # no labels here
    "online_fcfd": {"teacher": "resnet8"},
}
STEPS = 8


def _batch(n: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.arange(n) % 10
    return x, y, torch.arange(n)


#: segmentation-only methods are run on a segmentation pair in test_seg_methods.py
CLASSIFICATION_METHODS = [n for n in METHODS.names()
                          if METHODS.get(n).runs_on("classification")]

#: further settings whose loss must fall too: ReviewKD's loss without its warm-up scaling,
#: CRD with fixed memory banks (momentum 1: a stationary contrastive objective)
VARIANTS: list[tuple[str, dict]] = [
    ("reviewkd", {"warmup_epochs": 0}),
    ("crd", {"num_negatives": 16, "momentum": 1.0, "negatives": "uniform"}),
]


@pytest.mark.parametrize("name, options", [
    *((n, TINY_OPTIONS.get(n, {})) for n in CLASSIFICATION_METHODS), *VARIANTS])
def test_method_trains_and_leaves_the_teacher_alone(name, options):
    cls = METHODS.get(name)
    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1) if cls.needs_teacher else None
    student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
    teacher_before = copy.deepcopy(teacher.state_dict()) if teacher is not None else None
    torch.manual_seed(0)
    d = build_distiller(name, options, student, teacher, train_size=64)
    d.train()

    def inspect(step, logits, losses):
        assert logits.shape == (16, 10)
        assert losses, f"{name} returned no loss terms"
        if step == 0:
            grads = [p.grad for p in student.parameters()]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), (
                f"{name}: the student got no gradient")
        if teacher is not None:
            assert all(p.grad is None for p in teacher.parameters()), (
                f"{name}: the teacher got a gradient at step {step}")

    # sampled choices (e.g. FCFD paths, CRD negatives) repeat every 2 steps
    totals = sgd_descent(d, _batch(), STEPS, lr=0.02, trainable_only=True,
                         reseed=lambda step: step % 2, inspect=inspect)
    assert totals[-1] < totals[0], f"{name}: loss did not decrease: {totals}"
    if teacher is not None:
        assert not any(p.requires_grad for p in teacher.parameters()), (
            f"{name}: a teacher parameter requires a gradient")
        assert not teacher.training, f"{name}: the teacher left eval mode"
        after = teacher.state_dict()
        assert all(torch.equal(teacher_before[k], after[k]) for k in after), (
            f"{name}: the teacher's weights or statistics changed")



@pytest.mark.parametrize("name", ["at", "vid", "ofd", "reviewkd"])
def test_teacher_features_of_another_batch_size_are_a_user_error(name, tiny_pair, monkeypatch):
    teacher, student = tiny_pair
    d = build_distiller(name, TINY_OPTIONS.get(name, {}), student, teacher, train_size=64)
    x, y, _ = _batch()
    real = d.teacher_source.features
    monkeypatch.setattr(d.teacher_source, "features",
                        lambda batch: real(Batch(batch.images[:4])))
    with pytest.raises(UserError):
        d(x, y)

#: methods whose losses change with the epoch (warm-ups), with the options that show it
EPOCH_DEPENDENT: dict[str, dict] = {
    "dkd": {},
    "fcfd": {},
    "reviewkd": {},
    "combo": {"parts": [{"name": "dkd"}, {"name": "reviewkd"}]},
}


def _losses_at(name: str, options: dict, epoch: int | None) -> dict[str, torch.Tensor]:
    """The loss terms of a freshly built distiller on a fixed batch, after ``set_epoch(epoch,
    240)`` (nothing called when ``epoch`` is None: a Python API user who never heard of it)."""
    cls = METHODS.get(name)
    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1) if cls.needs_teacher else None
    student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
    torch.manual_seed(0)
    d = build_distiller(name, options, student, teacher, train_size=64)
    if epoch is not None:
        d.set_epoch(epoch, 240)
    d.train()
    torch.manual_seed(1)
    with torch.no_grad():
        return {k: v.detach() for k, v in d(*_batch())[1].items()}


@pytest.mark.parametrize("name, options", [
    *((n, TINY_OPTIONS.get(n, {})) for n in CLASSIFICATION_METHODS),
    *((n, o) for n, o in EPOCH_DEPENDENT.items() if o),
])
def test_a_new_distiller_starts_at_epoch_0_without_set_epoch(name, options):
    # issue 12: FCFD's Python API user who never called set_epoch got no L2 warm-up
    fresh, first = _losses_at(name, options, None), _losses_at(name, options, 0)
    assert fresh.keys() == first.keys()
    for term in fresh:
        torch.testing.assert_close(fresh[term], first[term], msg=f"{name}.{term}")
    if EPOCH_DEPENDENT.get(name) == options:  # the check above compares a real schedule
        late = _losses_at(name, options, 100)
        assert any(not torch.allclose(first[k], late[k]) for k in first), (
            f"{name}: epoch 100's losses equal epoch 0's; its warm-up is not seen here")


@pytest.mark.parametrize("name", CLASSIFICATION_METHODS)
def test_method_trains_channels_last(name):
    """``train.channels_last`` (on by default on CPU and CUDA): the distiller's weights and the
    images in NHWC; every method runs forward and backward and gives the NCHW losses."""
    cls = METHODS.get(name)

    def build():  # noqa: ANN202 - the same distiller each call
        teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1) if cls.needs_teacher else None
        student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
        torch.manual_seed(0)
        d = build_distiller(name, TINY_OPTIONS.get(name, {}), student, teacher, train_size=64)
        return d.train()

    x, y, index = _batch()
    results = {}
    for layout, model, images in (
            ("nchw", build(), x),
            ("nhwc", build().to(memory_format=torch.channels_last),
             x.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(0)
        _, losses = model(images, y, index)
        sum(losses.values()).backward()
        results[layout] = {k: float(v.detach()) for k, v in losses.items()}
        grads = [p.grad for p in model.student.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
    for term, value in results["nchw"].items():
        assert results["nhwc"][term] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, term)
