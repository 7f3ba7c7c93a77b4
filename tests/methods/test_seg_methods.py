"""Segmentation methods on a tiny Staged pair: every method that supports the segmentation
task trains a few CPU steps with finite losses and a frozen teacher; SKD's gradients reach
exactly their side and one step equals the authors' alternating student / critic steps."""

from __future__ import annotations

import copy

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.base import Batch
from kdlab.methods.kd.segmentation import PixelKD
from kdlab.methods.shared.dense import pixel_kl_loss
from kdlab.methods.skd.losses import gradient_penalty, pairwise_similarity_loss
from support.segmentation import seg_batch, seg_task, tiny_seg_pair

SEG_METHODS = [n for n in METHODS.names() if "segmentation" in METHODS.get(n).supported_tasks()]
#: every method that can be part of a combo on segmentation
SEG_PARTS = [n for n in SEG_METHODS if METHODS.get(n).combinable and n != "combo"]
#: options a method needs on the tiny pair (combo: every segmentation part at once)
TINY_OPTIONS: dict[str, dict] = {
    "combo": {"parts": [{"name": n} for n in SEG_PARTS]},
    "cwd": {"feature_weight": 1.0},
}
STEPS = 6


def _build(name: str, options: dict | None = None):
    teacher, student = tiny_seg_pair()
    if not METHODS.get(name).needs_teacher:
        teacher = None
    torch.manual_seed(0)
    d = build_distiller(name, TINY_OPTIONS.get(name, {}) if options is None else options,
                        student, teacher, task=seg_task())
    return d, student, teacher


def _optimizers(d):
    separate = d.separate_optimizers()
    own = {id(p) for params, _ in separate.values() for p in params}
    main = torch.optim.SGD([p for p in d.parameters() if p.requires_grad and id(p) not in own],
                           lr=0.05, momentum=0.9)
    return [main] + [factory(params) for params, factory in separate.values()]


def test_the_segmentation_methods_are_registered():
    assert {"kd", "fitnet", "at", "combo", "skd", "cwd"} <= set(SEG_METHODS)
    assert {"kd", "fitnet", "at", "skd", "cwd"} <= set(SEG_PARTS)
    assert METHODS.get("kd").for_task("segmentation") is PixelKD


@pytest.mark.parametrize("name", SEG_METHODS)
def test_segmentation_method_trains_and_leaves_the_teacher_alone(name):
    d, student, teacher = _build(name)
    teacher_before = copy.deepcopy(teacher.state_dict()) if teacher is not None else None
    d.train()
    optimizers = _optimizers(d)
    x, y = seg_batch()
    ce = []
    for step in range(STEPS):
        logits, losses = d(x, y)
        assert logits.shape == (4, 11, 8, 8)
        if teacher is not None:
            assert set(losses) - {"ce"}, f"{name} returned no distillation term"
        for term, value in losses.items():
            assert value.dim() == 0 and torch.isfinite(value), f"{name}.{term} = {value}"
        for opt in optimizers:
            opt.zero_grad()
        sum(losses.values()).backward()
        if step == 0:
            assert any(p.grad is not None and p.grad.abs().sum() > 0
                       for p in student.parameters()), f"{name}: the student got no gradient"
            assert teacher is None or all(p.grad is None for p in teacher.parameters())
        for opt in optimizers:
            opt.step()
        ce.append(losses["ce"].item())
    assert ce[-1] < ce[0], f"{name}: the label loss did not decrease: {ce}"
    if teacher is None:
        return
    after = teacher.state_dict()
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)


def test_methods_for_classification_only_refuse_segmentation():
    teacher, student = tiny_seg_pair()
    with pytest.raises(UserError, match="does not support task"):
        build_distiller("rkd", {}, student, teacher, task=seg_task())
    with pytest.raises(UserError, match="does not support task"):
        build_distiller("combo", {"parts": [{"name": "kd"}, {"name": "rkd"}]}, student,
                        teacher, task=seg_task())


def test_pixel_kd_is_the_per_pixel_kl():
    d, student, teacher = _build("kd", {"temperature": 2.0, "kd_weight": 3.0})
    x, y = seg_batch()
    d.train()
    _, losses = d(x, y)
    with torch.no_grad():  # the student in train mode again: the same batch statistics
        ref = 3.0 * pixel_kl_loss(student.features(x).logits, teacher.features(x).logits, 2.0)
    assert losses["kd"].item() == pytest.approx(ref.item(), rel=1e-5)
    assert set(losses) == {"ce", "kd"}


def test_skd_terms_are_settings():
    d, *_ = _build("skd", {"pair_weight": 0.0, "holistic_weight": 0.0})
    assert not hasattr(d, "critic") and d.separate_optimizers() == {}
    _, losses = d(*seg_batch())
    assert set(losses) == {"ce", "pixel"}
    d, *_ = _build("skd", {"pixel_weight": 0.0, "holistic_weight": 0.0, "pair_stage": 2})
    _, losses = d(*seg_batch())
    assert set(losses) == {"ce", "pair"}
    with pytest.raises(UserError, match="every term off"):
        _build("skd", {"pixel_weight": 0.0, "pair_weight": 0.0, "holistic_weight": 0.0})
    with pytest.raises(UserError, match="critic_optimizer"):
        _build("skd", {"critic_optimizer": "rmsprop"})


def test_skd_pair_term_uses_the_decoder_feature():
    d, student, teacher = _build("skd", {"pixel_weight": 0.0, "holistic_weight": 0.0})
    x, y = seg_batch()
    d.train()
    _, losses = d(x, y)
    with torch.no_grad():
        s = student.features(x)  # train mode again: the same batch statistics
        t = teacher.features(x)
    ref = 0.5 * pairwise_similarity_loss(s.embedding, t.embedding, pool_scale=0.5)
    assert losses["pair"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_skd_conditioned_critic_sees_the_image():
    d, *_ = _build("skd", {"condition_on_image": True})
    assert d.critic[0].num_features == 11 + 3
    _, losses = d(*seg_batch())
    assert torch.isfinite(losses["critic"]) and torch.isfinite(losses["holistic"])


def _grads(loss, params):
    return torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)


def test_skd_each_term_reaches_exactly_its_side():
    d, student, teacher = _build("skd")
    d.train()
    _, losses = d(*seg_batch())
    s_params = [p for p in student.parameters() if p.requires_grad]
    c_params = list(d.critic.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())

    def moved(grads):
        return [g is not None and g.abs().sum().item() > 0 for g in grads]

    for term in ("ce", "pixel", "pair", "holistic"):
        assert any(moved(_grads(losses[term], s_params))), f"{term}: no student gradient"
        assert not any(moved(_grads(losses[term], c_params))), f"{term} reached the critic"
    assert not any(moved(_grads(losses["critic"], s_params))), "critic reached the student"
    assert sum(moved(_grads(losses["critic"], c_params))) >= len(c_params) // 2


@pytest.mark.parametrize("critic_optimizer", ["adam", "sgd"])
def test_one_skd_step_is_the_authors_alternation(critic_optimizer):
    d, *_ = _build("skd", {"critic_optimizer": critic_optimizer})
    ref = copy.deepcopy(d)
    d.train()
    ref.train()
    x, y = seg_batch()
    c = d.cfg

    # kdlab: one forward, one backward, the run's optimiser and the critic's own
    main, critic_opt = _optimizers(d)
    torch.manual_seed(5)
    _, losses = d(x, y)
    main.zero_grad()
    critic_opt.zero_grad()
    sum(losses.values()).backward()
    main.step()
    critic_opt.step()

    # the authors' order: student step on its loss, then the critic's step on the maps
    # computed before the student's update
    g_opt, d_opt = _optimizers(ref)
    torch.manual_seed(5)
    t = ref.teacher_source.features(Batch(x))
    s = ref.task.features(ref.student, x, y)
    g_loss = (ref.task_loss(s, y) + c.pixel_weight * pixel_kl_loss(s.logits, t.logits)
              + c.pair_weight * pairwise_similarity_loss(s.embedding, t.embedding)
              - c.holistic_weight * ref.critic(s.logits).mean())
    g_opt.zero_grad()
    g_loss.backward()
    g_opt.step()
    d_opt.zero_grad()
    d_t = ref.critic(t.logits).mean()
    d_s = ref.critic(s.logits.detach()).mean()
    d_loss = c.holistic_weight * (d_s - d_t) + c.holistic_weight * c.gp_weight * (
        gradient_penalty(ref.critic, t.logits, s.logits))
    d_loss.backward()
    d_opt.step()

    ours, theirs = d.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=1e-5), k
    # and the step did something on both sides
    before = _build("skd", {"critic_optimizer": critic_optimizer})[0].state_dict()
    assert not torch.equal(before["critic.4.weight"], ours["critic.4.weight"])
    assert not torch.equal(before["student.net.cls.weight"], ours["student.net.cls.weight"])


def test_skd_under_bf16_autocast_stays_finite():
    d, *_ = _build("skd")
    d.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = d(*seg_batch())
    assert losses["pair"].dtype == torch.float32  # cosine differences are compared in fp32
    total = sum(v.float() for v in losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in d.parameters())
