"""FRSKD+SLA (Ji et al., CVPR 2021; Lee et al., ICML 2020): SLA's pieces against direct
formulas, the method's terms, gradient flow, training steps, evaluation and recipes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import sgd_descent
from kdlab.core.config import build_dataclass, load_config
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.frskd.frskd_sla import FRSKDSLA
from kdlab.methods.frskd.sla import (
    aggregate_joint_logits,
    joint_targets,
    rotate_batch,
    sla_joint_loss,
    sla_sd_loss,
)
from support.references import ref_kl

M = 4


def _batch(student, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, *student.input_shape, generator=g)
    targets = torch.randint(0, student.num_classes, (n,), generator=g)
    return images, targets


# ------------------------------------------------------------------ SLA's pure pieces
def test_rotate_batch_turns_each_image_by_quarter_turns():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float).view(2, 1, 3, 3)
    r = rotate_batch(x)
    assert r.shape == (8, 1, 3, 3)
    for b in range(2):
        img = x[b, 0].tolist()
        for j in range(M):
            want = img
            for _ in range(j):  # one counter-clockwise quarter turn: out[h][w] = in[w][n-1-h]
                want = [[want[w][2 - h] for w in range(3)] for h in range(3)]
            assert r[b * M + j, 0].tolist() == want, (b, j)


def test_joint_targets_are_class_major():
    y = torch.tensor([0, 3, 1])
    assert joint_targets(y).tolist() == [y_ * M + j for y_ in y.tolist() for j in range(M)]


def _ref_aggregate(z: torch.Tensor, b: int, k: int) -> list[list[float]]:
    """s_i(x_b) = 1/M sum_j z_{(i, j)}(t_j(x_b)), row b*M+j, column i*M+j."""
    return [[sum(z[bb * M + j, i * M + j].item() for j in range(M)) / M for i in range(k)]
            for bb in range(b)]


def test_aggregate_is_the_mean_of_each_rotations_own_labels():
    b, k = 3, 5
    z = torch.randn(b * M, k * M, dtype=torch.float64)
    agg = aggregate_joint_logits(z)
    assert agg.shape == (b, k)
    torch.testing.assert_close(agg, torch.tensor(_ref_aggregate(z, b, k), dtype=z.dtype))
    with pytest.raises(ValueError):
        aggregate_joint_logits(z[:-1])


def test_joint_loss_is_the_mean_over_rotations_of_the_joint_cross_entropy():
    b, k = 3, 5
    z = torch.randn(b * M, k * M, dtype=torch.float64)
    y = torch.tensor([4, 0, 2])
    total = 0.0
    for j in range(M):  # 1/M sum_j CE(joint(t_j(x)), (y, j)), each a batch mean
        for bb in range(b):
            row = z[bb * M + j].tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            total += (log_z - row[y[bb].item() * M + j]) / (M * b)
    assert sla_joint_loss(z, y).item() == pytest.approx(total, rel=1e-10)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_sd_loss_is_kl_from_the_aggregate(tau):
    b, k = 3, 5
    z = torch.randn(b * M, k * M, dtype=torch.float64, requires_grad=True)
    u = torch.randn(b, k, dtype=torch.float64, requires_grad=True)
    agg = torch.tensor(_ref_aggregate(z.detach(), b, k), dtype=torch.float64)
    loss = sla_sd_loss(u, z, tau)
    assert loss.item() == pytest.approx(ref_kl(u.detach(), agg, tau), rel=1e-10)
    loss.backward()
    assert z.grad is None and u.grad is not None  # the aggregate is a fixed target


# ------------------------------------------------------------------ the method
def test_registered_with_frskds_settings_and_its_own(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd_sla", {"alpha": 1, "sla_weight": 0.5}, student, None)
    assert isinstance(d, FRSKDSLA) and d.cfg.alpha == 1.0 and d.cfg.sla_weight == 0.5
    assert FRSKDSLA.needs_teacher is False
    assert d.joint_head.out_features == d.self_teacher_joint_head.out_features == 10 * M
    with pytest.raises(UserError):
        build_distiller("frskd_sla", {"sla_weight": -1}, student, None)
    with pytest.raises(UserError):
        build_distiller("frskd_sla", {"sla_temperature": 0}, student, None)


def test_non_square_inputs_are_refused(tiny_pair):
    _, student = tiny_pair
    student.input_shape = (3, 16, 12)
    with pytest.raises(UserError, match="square"):
        build_distiller("frskd_sla", {}, student, None)


def _at_map(f: torch.Tensor) -> torch.Tensor:
    return F.normalize(f.pow(2).mean(1).flatten(1))


def test_terms_match_the_authors_formulation(tiny_pair):
    """Each term recomputed from the distiller's own modules as the FRSKD authors' SLA code
    states it: the FRSKD losses on the single and aggregated logits / un-rotated and rotated
    maps *concatenated* (one batch mean), SLA's terms from the formulas above."""
    _, student = tiny_pair
    d = build_distiller("frskd_sla", {"alpha": 2.0, "beta": 100.0, "sla_weight": 1.0},
                        student, None).double()
    x, y = _batch(student)
    x = x.double()
    d.train()
    torch.manual_seed(0)
    logits, losses = d(x, y)
    assert set(losses) == {"ce", "self_teacher_ce", "joint_ce", "self_teacher_joint_ce",
                           "sla_sd", "self_teacher_sla_sd", "kd", "feat"}
    # the same passes again (train-mode BN: batch statistics, so the values repeat)
    out = student.features(x)
    feats = out.stages[-d.levels:]
    refined, st_logits = d.self_teacher(feats)
    xr = torch.stack([torch.rot90(x, j, (2, 3)) for j in range(M)], 1).view(-1, *x.shape[1:])
    rot = student.features(xr)
    rot_feats = rot.stages[-d.levels:]
    rot_refined, _ = d.self_teacher(rot_feats)
    joint = d.joint_head(F.adaptive_avg_pool2d(rot_feats[-1], 1).flatten(1))
    st_joint = d.self_teacher_joint_head(F.adaptive_avg_pool2d(rot_refined[-1], 1).flatten(1))
    b, k = x.shape[0], student.num_classes
    agg = torch.tensor(_ref_aggregate(joint, b, k), dtype=torch.float64)
    st_agg = torch.tensor(_ref_aggregate(st_joint, b, k), dtype=torch.float64)
    yj = torch.tensor([c * M + j for c in y.tolist() for j in range(M)])
    want = {
        "ce": F.cross_entropy(out.logits, y).item(),
        "self_teacher_ce": F.cross_entropy(st_logits, y).item(),
        "joint_ce": F.cross_entropy(joint, yj).item(),
        "self_teacher_joint_ce": F.cross_entropy(st_joint, yj).item(),
        "sla_sd": ref_kl(out.logits.detach(), agg, 4.0),
        "self_teacher_sla_sd": ref_kl(st_logits.detach(), st_agg, 4.0),
        "kd": 2.0 * ref_kl(torch.cat([out.logits.detach(), agg]),
                           torch.cat([st_logits.detach(), st_agg]), 4.0),
        "feat": 100.0 * sum(
            (_at_map(torch.cat([f, fr])) - _at_map(torch.cat([r, rr]))).pow(2).mean().item()
            for f, r, fr, rr in zip(feats, refined, rot_feats, rot_refined, strict=True)),
    }
    for name, value in want.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-8), name
    assert logits.shape == (b, k)


def test_sla_weight_zero_and_frskd_f(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd_sla", {"sla_weight": 0, "beta": 0}, student, None)
    _, losses = d(*_batch(student))
    assert set(losses) == {"ce", "self_teacher_ce", "joint_ce", "self_teacher_joint_ce", "kd"}


def _touched(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


#: term -> (student backbone, student classifier, joint head, self-teacher, its joint head)
FLOW = {
    "ce": (True, True, False, False, False),
    "self_teacher_ce": (True, False, False, True, False),
    "joint_ce": (True, False, True, False, False),
    "self_teacher_joint_ce": (True, False, False, True, True),
    "sla_sd": (True, True, False, False, False),
    "self_teacher_sla_sd": (True, False, False, True, False),
    "kd": (True, True, True, False, False),
    "feat": (True, False, False, False, False),
}


@pytest.mark.parametrize("term", sorted(FLOW))
def test_each_term_reaches_exactly_its_parameters(tiny_pair, term):
    _, student = tiny_pair
    d = build_distiller("frskd_sla", {}, student, None)
    d.zero_grad()
    _, losses = d(*_batch(student))
    losses[term].backward()
    backbone = nn.ModuleList(d.student.stage_modules(i) for i in range(d.student.num_stages))
    got = (_touched(backbone), _touched(d.student.classifier_modules()), _touched(d.joint_head),
           _touched(d.self_teacher), _touched(d.self_teacher_joint_head))
    assert got == FLOW[term]


def test_detach_features_keeps_the_self_teachers_terms_off_the_student(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd_sla", {"detach_features": True}, student, None)
    _, losses = d(*_batch(student))
    (losses["self_teacher_ce"] + losses["self_teacher_joint_ce"]
     + losses["self_teacher_sla_sd"]).backward()
    assert not _touched(d.student) and _touched(d.self_teacher)


def test_a_few_cpu_steps_lower_the_loss(tiny_pair):
    _, student = tiny_pair
    torch.manual_seed(0)
    d = build_distiller("frskd_sla", {}, student, None)
    totals = sgd_descent(d, _batch(student, n=8), 5)
    assert totals[-1] < totals[0], totals


def test_evaluation_and_export_keep_k_classes(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd_sla", {}, student, None)
    nets = d.evaluated()
    assert list(nets) == ["student", "self_teacher", "student_aggregated"]
    assert nets["student"] is student
    x, _ = _batch(student)
    d.eval()
    with torch.no_grad():
        for name, net in nets.items():
            assert net(x).shape == (3, 10), name
        joint = d.joint_head(student.features(rotate_batch(x)).embedding)
        torch.testing.assert_close(nets["student_aggregated"](x), aggregate_joint_logits(joint))
    exported = d.exported()
    assert list(exported) == ["student"] and exported["student"] is student.net
    assert "joint_head.weight" in d.state_dict()  # in the run's checkpoint, not the export
    assert not any("joint" in k for k in exported["student"].state_dict())


RECIPES = sorted(Path(__file__).resolve().parents[3].glob("recipes/*/frskd_sla/*.yaml"))


def test_recipes_exist():
    assert {f"{p.parent.parent.name}/{p.name}" for p in RECIPES} >= {
        "cifar100/wrn_16_2_from_self.yaml", "fashion_mnist/resnet8_from_self.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_is_valid(path):
    cfg = load_config(path)
    assert cfg.method_name == "frskd_sla"
    opts = build_dataclass(FRSKDSLA.Config, cfg.method_options, where="method.frskd_sla")
    assert (opts.alpha, opts.beta, opts.sla_weight) == (2.0, 100.0, 1.0)  # the authors' README
