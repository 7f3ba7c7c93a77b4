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

SEG_METHODS = [n for n in METHODS.names() if METHODS.get(n).supports("segmentation")]
#: every method that can be part of a combo on segmentation
SEG_PARTS = [n for n in SEG_METHODS if METHODS.get(n).combinable and n != "combo"]
#: options a method needs on the tiny pair (combo: every segmentation part at once)
TINY_OPTIONS: dict[str, dict] = {
    # FCFD's default teacher_bn: batch (its classification authors' train-mode teacher) on this
    # 4-image batch of the tiny pair leaves the combo's label loss flat over the 6 steps; the
    # eval-mode teacher (kdlab's former default) is what this training check runs
    "combo": {"parts": [{"name": n, **({"teacher_bn": "eval"} if n == "fcfd" else {})}
                        for n in SEG_PARTS]},
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


def _kdlab_step(d, x, y):
    """kdlab's step: one forward, one backward, the run's optimiser and the critic's own."""
    main, critic_opt = _optimizers(d)
    torch.manual_seed(5)
    _, losses = d(x, y)
    main.zero_grad()
    critic_opt.zero_grad()
    sum(losses.values()).backward()
    main.step()
    critic_opt.step()


def _same_state(d, ref, options):
    ours, theirs = d.state_dict(), ref.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.allclose(ours[k], theirs[k], atol=1e-6, rtol=1e-5), k
    # and the step did something on both sides
    before = _build("skd", options)[0].state_dict()
    assert not torch.equal(before["critic.4.weight"], ours["critic.4.weight"])
    assert not torch.equal(before["student.net.cls.weight"], ours["student.net.cls.weight"])


@pytest.mark.parametrize("critic_optimizer", ["adam", "sgd"])
def test_one_skd_step_is_the_authors_alternation(critic_optimizer):
    """The SKD authors' step (networks/kd_model.py:119-173): student step on CE + pixel
    (summed over the batch's images) + pair + generator, then the critic's WGAN-GP step
    on the maps computed before the student's update, teacher first."""
    options = {"critic_optimizer": critic_optimizer, "pixel_reduction": "image",
               "spectral_norm": "sagan"}
    d, *_ = _build("skd", options)
    ref = copy.deepcopy(d)
    d.train()
    ref.train()
    x, y = seg_batch()
    c = d.cfg
    _kdlab_step(d, x, y)

    g_opt, d_opt = _optimizers(ref)
    torch.manual_seed(5)
    t = ref.teacher_source.features(Batch(x))
    s = ref.task.features(ref.student, x, y)
    pixel = pixel_kl_loss(s.logits, t.logits) * x.shape[0]  # summed over the images
    g_loss = (ref.task_loss(s, y) + c.pixel_weight * pixel
              + c.pair_weight * pairwise_similarity_loss(s.embedding, t.embedding)
              - c.generator_weight * ref.critic(s.logits).mean())
    g_opt.zero_grad()
    g_loss.backward()
    g_opt.step()
    d_opt.zero_grad()
    d_t = ref.critic(t.logits).mean()
    d_s = ref.critic(s.logits.detach()).mean()
    d_loss = c.critic_weight * (d_s - d_t) + c.critic_weight * c.gp_weight * (
        gradient_penalty(ref.critic, t.logits, s.logits))
    d_loss.backward()
    d_opt.step()
    _same_state(d, ref, options)


#: CIRKD's SKD row (winycg/CIRKD @ 48eb81b train_scripts/train_kd/train_skd.sh, train_kd.py)
CIRKD_SKD = {"pixel_weight": 1.0, "pixel_reduction": "pixel", "pair_weight": 10.0,
             "pair_pool": "kernel", "pool_kernel": 2, "pair_norm": "normalize",
             "adversarial": "hinge", "generator_weight": 0.001, "critic_weight": 0.1,
             "gp_weight": 0.0, "critic_optimizer": "adam", "critic_schedule": "constant",
             "critic_order": "student_first", "spectral_norm": "sagan"}


def _cirkd_pair_loss(f_s, f_t):
    """CIRKD's CriterionStructuralKD (losses/skd.py:20-40), written out: 2x2 max pooling
    (ceil), F.normalize over channels, bmm similarities, mean squared difference."""
    def sim(f):
        f = torch.nn.functional.max_pool2d(f, 2, 2, ceil_mode=True)
        f = torch.nn.functional.normalize(f.flatten(2), p=2, dim=1)
        return torch.bmm(f.transpose(1, 2), f)
    return (sim(f_s) - sim(f_t)).pow(2).mean()


def test_one_skd_step_is_cirkds():
    """CIRKD's step (train_kd.py:313-376): student loss CE + KD + lambda_adv * G + lambda_skd *
    pair-wise, its backward and SGD step; then the critic's hinge loss on D(S) then D(T) of
    the detached maps (computed before the student's step), its Adam step."""
    d, *_ = _build("skd", CIRKD_SKD)
    ref = copy.deepcopy(d)
    d.train()
    ref.train()
    x, y = seg_batch()
    _kdlab_step(d, x, y)

    g_opt, d_opt = _optimizers(ref)
    torch.manual_seed(5)
    t = ref.teacher_source.features(Batch(x))
    s = ref.task.features(ref.student, x, y)
    adv_g = 0.001 * -ref.critic(s.logits).mean()
    d_s, d_t = ref.critic(s.logits.detach()), ref.critic(t.logits.detach())
    adv_d = 0.1 * (torch.relu(1.0 - d_t).mean() + torch.relu(1.0 + d_s).mean())
    kd = torch.nn.functional.kl_div(  # losses/kd.py: rows of B h w pixels, batchmean, T 1
        torch.log_softmax(s.logits.permute(0, 2, 3, 1).reshape(-1, s.logits.shape[1]), 1),
        torch.softmax(t.logits.permute(0, 2, 3, 1).reshape(-1, t.logits.shape[1]), 1),
        reduction="batchmean")
    losses = ref.task_loss(s, y) + kd + adv_g + 10.0 * _cirkd_pair_loss(s.embedding, t.embedding)
    g_opt.zero_grad()
    losses.backward()
    g_opt.step()
    d_opt.zero_grad()
    adv_d.backward()
    d_opt.step()
    _same_state(d, ref, CIRKD_SKD)


def test_skd_pair_term_settings_are_the_two_references():
    g = torch.Generator().manual_seed(4)
    f_s, f_t = torch.randn(2, 6, 9, 13, generator=g), torch.randn(2, 10, 9, 13, generator=g)
    ours = pairwise_similarity_loss(f_s, f_t, pool="kernel", kernel=2, norm="normalize")
    torch.testing.assert_close(ours, _cirkd_pair_loss(f_s, f_t))
    # the gradient goes through F.normalize's norm (CIRKD), not around it (the SKD authors)
    f_s.requires_grad_(True)
    (through,) = torch.autograd.grad(pairwise_similarity_loss(
        f_s, f_t, pool="kernel", norm="normalize"), f_s)
    (around,) = torch.autograd.grad(pairwise_similarity_loss(
        f_s, f_t, pool="kernel", norm="detached"), f_s)
    assert not torch.allclose(through, around)
    with pytest.raises(UserError, match="pair_norm"):
        _build("skd", {"pair_norm": "l1"})
    with pytest.raises(UserError, match="adversarial"):
        _build("skd", {"adversarial": "lsgan"})


def test_skd_holistic_weight_sets_both_sides():
    d, *_ = _build("skd", {"holistic_weight": 0.3})
    assert d.cfg.holistic_weights == (0.3, 0.3)
    d, *_ = _build("skd", {"pixel_weight": 0.0, "pair_weight": 0.0, "generator_weight": 0.0,
                           "critic_weight": 0.2, "adversarial": "hinge"})
    _, losses = d(*seg_batch())
    assert set(losses) == {"ce", "critic"}  # a critic that trains, no term on the student


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


def test_cwd_feature_projection_is_the_authors_or_cirkds():
    """TorchDistiller's cwd_feat (1x1 conv + BN + ReLU) or CIRKD's CriterionCWD (a bare 1x1
    conv without bias, losses/cwd.py:57, 62-63), both into the teacher's channels."""
    d, student, teacher = _build("cwd", {"feature_weight": 1.0})
    assert [type(m) for m in d.projection] == [torch.nn.Conv2d, torch.nn.BatchNorm2d,
                                               torch.nn.ReLU]
    d, student, teacher = _build("cwd", {"feature_weight": 1.0, "feature_projection": "conv"})
    assert type(d.projection) is torch.nn.Conv2d and d.projection.bias is None
    assert d.projection.weight.shape == (teacher.embedding_dim, student.embedding_dim, 1, 1)
    _, losses = d(*seg_batch())
    assert torch.isfinite(losses["cwd_feature"])
    with pytest.raises(UserError, match="feature_projection"):
        _build("cwd", {"feature_weight": 1.0, "feature_projection": "mlp"})
