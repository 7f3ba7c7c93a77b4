"""Combining methods: a combo's terms equal its parts' own terms, CE is counted once, the
student's and teacher's features are computed once per step, and bad part lists are
user errors. Also the DKD warm-up, which a combo must pass on."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller


def _batch(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % 10


def _count_features(monkeypatch, net):
    calls = []
    original = net.features

    def counting(x):
        calls.append(1)
        return original(x)

    monkeypatch.setattr(net, "features", counting)
    return calls


def test_combo_terms_equal_the_parts_own_terms(tiny_pair, monkeypatch):
    teacher, student = tiny_pair
    student.eval()  # BN in eval mode: every forward pass gives the same features
    x, y = _batch()
    parts = [{"name": "kd", "temperature": 2}, {"name": "rkd", "angle_weight": 10},
             {"name": "sp"}, {"name": "dkd", "warmup": 0}]
    combo = build_distiller("combo", {"parts": parts, "ce_weight": 0.5}, student, teacher)
    s_calls = _count_features(monkeypatch, student)
    t_calls = _count_features(monkeypatch, teacher)
    logits, losses = combo(x, y)
    assert len(s_calls) == 1 and len(t_calls) == 1
    assert set(losses) == {"ce", "kd", "rkd_distance", "rkd_angle", "sp", "dkd"}
    torch.testing.assert_close(logits, student(x))
    torch.testing.assert_close(losses["ce"], 0.5 * torch.nn.functional.cross_entropy(logits, y))
    for spec in parts:
        options = {k: v for k, v in spec.items() if k != "name"}
        alone = build_distiller(spec["name"], options, student, teacher)
        _, own = alone(x, y)
        assert "ce" in own  # each method alone adds its own CE; the combo counts it once
        for term, value in own.items():
            if term != "ce":
                torch.testing.assert_close(losses[term], value)


def test_combo_trains_part_extras_and_never_the_teacher(tiny_pair):
    teacher, student = tiny_pair
    combo = build_distiller("combo", {"parts": [{"name": "kd"}, {"name": "cc"}]}, student,
                            teacher)
    projection = combo.parts["cc"].projection
    names = {n for n, _ in combo.named_parameters()}
    assert any(n.startswith("parts.cc.projection") for n in names)
    assert not any(p is q for p in combo.parameters() for q in teacher.parameters())
    x, y = _batch()
    _, losses = combo(x, y)
    sum(losses.values()).backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_combo_passes_the_epoch_to_its_parts(tiny_pair):
    teacher, student = tiny_pair
    combo = build_distiller("combo", {"parts": [{"name": "dkd", "warmup": 10}]}, student,
                            teacher)
    combo.set_epoch(4, 100)
    assert combo.parts["dkd"].kd_scale == pytest.approx(0.5)


def test_dkd_warmup_scales_the_kd_term_linearly(tiny_pair):
    teacher, student = tiny_pair
    student.eval()
    x, y = _batch()
    d = build_distiller("dkd", {"warmup": 20}, student, teacher)
    scaled = {}
    for epoch in (0, 9, 19, 50):
        d.set_epoch(epoch, 240)
        scaled[epoch] = d(x, y)[1]["dkd"]
    d_off = build_distiller("dkd", {"warmup": 0}, student, teacher)
    full = d_off(x, y)[1]["dkd"]
    torch.testing.assert_close(scaled[0], full / 20)
    torch.testing.assert_close(scaled[9], full / 2)
    torch.testing.assert_close(scaled[19], full)
    torch.testing.assert_close(scaled[50], full)


@pytest.mark.parametrize("options, message", [
    ({"parts": []}, "parts is empty"),
    ({"parts": [{"temperature": 4}]}, "needs a method name"),
    ({"parts": [{"name": "kd", "ce_weight": 1.0}]}, "set it once on the combo"),
    ({"parts": [{"name": "kd"}, {"name": "kd"}]}, "twice"),
    ({"parts": [{"name": "ce"}]}, "cannot be part of a combo"),
    ({"parts": [{"name": "combo"}]}, "cannot be part of a combo"),
    ({"parts": [{"name": "rkd", "distance_wieght": 1}]}, "distance_weight"),
    ({"parts": [{"name": "kdd"}]}, "kd"),
])
def test_bad_part_lists_are_user_errors(tiny_pair, options, message):
    teacher, student = tiny_pair
    with pytest.raises(UserError, match=message):
        build_distiller("combo", options, student, teacher)


def test_every_combinable_method_can_join_a_combo(tiny_pair):
    teacher, student = tiny_pair
    names = [n for n in METHODS.names() if getattr(METHODS.get(n), "combinable", False)
             and n != "combo" and METHODS.get(n).runs_on("classification")]
    assert {"kd", "dkd", "rkd", "sp", "cc", "irg", "at", "fitnet", "crd", "vid",
            "reviewkd", "fcfd"} <= set(names)
    tiny = {"crd": {"num_negatives": 8, "feat_dim": 16, "negatives": "uniform"}}
    x, y = _batch()
    for name in names:
        part = {"name": name, **tiny.get(name, {})}
        combo = build_distiller("combo", {"parts": [part]}, student, teacher, train_size=64)
        _, losses = combo(x, y, torch.arange(len(x)))
        assert len(losses) >= 2 and all(torch.isfinite(v) for v in losses.values()), name


def test_a_misspelled_part_option_is_caught_when_the_recipe_is_checked():
    """`kdlab train/distill` check the method block before building anything."""
    from kdlab.cli.commands.training import check
    from kdlab.core.config import load_config

    cfg = load_config(None, ["method.name=combo", "method.parts=[{name: kd, temprature: 4}]",
                             "model.teacher=resnet8", "model.teacher_checkpoint=x.pt"])
    with pytest.raises(UserError, match=r"method\.parts\[0\]\.temprature.*'temperature'"):
        check(cfg, "distill")


def test_a_logit_method_combines_with_a_feature_method(tiny_pair):
    """Issue 4's example: dkd + at, one forward pass per network, both terms present."""
    teacher, student = tiny_pair
    combo = build_distiller("combo", {"parts": [{"name": "dkd"}, {"name": "at"}]}, student,
                            teacher)
    combo.set_epoch(30, 240)  # past DKD's warm-up
    x, y = _batch()
    _, losses = combo(x, y)
    assert set(losses) == {"ce", "dkd", "at"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


@pytest.mark.parametrize("others", [[], [{"name": "rkd", "distance_weight": 0,
                                           "angle_weight": 0}]])
def test_fcfd_in_a_combo_gives_fcfds_own_terms(tiny_pair, others):
    """FCFD as a part (alone, or beside a part whose terms weigh nothing) gives FCFD's own
    terms: the same bridges, the same sampled paths, the same teacher pass (batch BN)."""
    teacher, student = tiny_pair
    student.eval()
    x, y = _batch()
    combo = build_distiller("combo", {"parts": [{"name": "fcfd"}, *others]}, student, teacher)
    alone = build_distiller("fcfd", {}, student, teacher)
    alone.load_state_dict(combo.parts["fcfd"].state_dict())  # the same bridge weights
    torch.manual_seed(3)  # the same sampled paths
    _, in_combo = combo(x, y)
    torch.manual_seed(3)
    _, own = alone(x, y)
    fcfd_terms = set(own) - {"ce"}
    assert fcfd_terms and fcfd_terms <= set(in_combo)
    for term in fcfd_terms:
        torch.testing.assert_close(in_combo[term], own[term])
    for term in set(in_combo) - fcfd_terms - {"ce"}:
        assert in_combo[term].item() == 0.0, term


def test_fcfd_and_kd_combine_once_their_teacher_bn_agrees(tiny_pair):
    """FCFD reads the teacher on batch statistics by default, KD on running ones; a combo runs
    one teacher pass, so the refusal names the setting to change, and once it is set the two
    train together: FCFD's bridges get a gradient, the teacher none."""
    teacher, student = tiny_pair
    parts = [{"name": "fcfd"}, {"name": "kd"}]
    with pytest.raises(UserError) as refused:
        build_distiller("combo", {"parts": parts}, student, teacher)
    message = str(refused.value)
    assert "fcfd: batch, kd: eval" in message
    assert "method.parts[1].teacher_bn=batch" in message and message.count(". ") == 0
    for agreed in ([{"name": "fcfd", "teacher_bn": "eval"}, {"name": "kd"}],
                   [{"name": "fcfd"}, {"name": "kd", "teacher_bn": "batch"}]):
        combo = build_distiller("combo", {"parts": agreed}, student, teacher)
        x, y = _batch()
        _, losses = combo(x, y)
        # FCFD's own L_kd is "kd"; the kd part's term, clashing, is named "kd.kd"
        assert {"ce", "kd", "app", "kd.kd"} <= set(losses), set(losses)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        bridges = [p for n, p in combo.named_parameters() if n.startswith("parts.fcfd.")]
        assert bridges and any(p.grad is not None and p.grad.abs().sum() > 0 for p in bridges)
        assert all(p.grad is None for p in teacher.parameters())
        combo.zero_grad(set_to_none=True)
