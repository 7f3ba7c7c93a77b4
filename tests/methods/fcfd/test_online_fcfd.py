"""Online FCFD (Liu et al., ICLR 2023, App. F): both networks train, each loss term against a
direct computation, gradient routing, path-aware BN on the teacher, evaluation and export."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from conftest import sgd_descent, tiny_staged
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.models import build_model
from kdlab.models.staged.view import Staged
from support.references import ref_kl, ref_l2

N_CLS = 10


def ref_ce(logits: torch.Tensor, targets: torch.Tensor) -> float:
    total = 0.0
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        total += math.log(sum(math.exp(v) for v in z)) - z[y]
    return total / len(logits)


def batch(n: int = 8, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64).to(dtype)
    return x, torch.arange(n) % N_CLS


def make(double: bool = False, **opts):
    """Online FCFD on the tiny pair: teacher twice as wide, both untrained."""
    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1)
    student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
    opts.setdefault("l2_warmup_epochs", 0)
    d = build_distiller("online_fcfd", opts, student, teacher)
    d.train()
    return d.double() if double else d


def fixed(d, paths):
    d.sample_paths = lambda: list(paths)
    return d


# --------------------------------------------------------------------- training
def test_every_network_changes_after_one_step():
    d = make(num_paths="all")
    before = {n: p.detach().clone() for n, p in d.named_parameters()}
    assert any(n.startswith("teacher_net.") for n in before)
    opt = torch.optim.SGD(d.parameters(), lr=0.05)
    x, y = batch()
    sum(d(x, y)[1].values()).backward()
    opt.step()
    unchanged = [n for n, p in d.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged
    assert d.teacher.training and all(p.requires_grad for p in d.teacher.parameters())


def test_loss_is_finite_and_falls_over_a_few_steps():
    torch.manual_seed(0)
    d = make()

    def inspect(step, logits, losses):
        assert {"ce", "kd", "app", "func_l2", "func_kl", "funcp_kl", "teacher_ce",
                "teacher_kd"} == set(losses)

    totals = sgd_descent(d, batch(16), 8, inspect=inspect,
                         reseed=lambda step: step % 2)  # the sampled paths repeat every 2 steps
    assert totals[-1] < 0.8 * totals[0], totals


# --------------------------------------------------------------------- each term
def relu_pool(f: torch.Tensor) -> torch.Tensor:
    """The authors' pooled view of a last-stage feature: ReLU, then global average pool."""
    return torch.nn.functional.adaptive_avg_pool2d(torch.relu(f), 1).flatten(1)


@pytest.mark.parametrize("k", [2, 3])
def test_terms_match_a_direct_computation_on_path_k1(k):
    d = fixed(make(double=True, temperature=4.0, app_weight=0.5, func_l2_weight=0.3,
                   func_kl_weight=0.7, teacher_ce_weight=0.9, teacher_kd_weight=0.6,
                   pooled_l2=True), [(k, 1)])
    x, y = batch(dtype=torch.float64)
    logits, losses = d(x, y)
    teacher, student = d.teacher, d.student
    with torch.no_grad():  # train mode: every BN normalises with the batch's statistics
        t, s = teacher.features(x), student.features(x)
        assert torch.allclose(logits, s.logits)
        app = sum(ref_l2(d.b_st[str(j)](s.stages[j - 1]), t.stages[j - 1]) for j in (2, 3, 4))
        app += ref_l2(relu_pool(d.b_st["4"](s.stages[3])), relu_pool(t.stages[3]))  # pooled
        f = d.b_st[str(k)](s.stages[k - 1])  # B_st^k(F_s^k) through M_t^{k+1..N}
        l2 = 0.0
        for stage in range(k + 1, 5):
            f = teacher.stage_forward(stage - 1, f)
            l2 += ref_l2(f, t.stages[stage - 1])
        l2 += ref_l2(relu_pool(f), relu_pool(t.stages[3]))  # pooled L2 (authors' code)
        func_kl = ref_kl(teacher.head_forward(f), t.logits, 4.0)  # l = N + 1: C_t
    expect = {
        "ce": ref_ce(s.logits, y),
        "kd": ref_kl(s.logits, t.logits, 4.0),  # student learns from the teacher
        "app": 0.5 * app,
        "func_l2": 0.3 * l2,
        "func_kl": 0.7 * func_kl,
        "funcp_kl": 0.0,  # no <k, 0> path drawn
        "teacher_ce": 0.9 * ref_ce(t.logits, y),
        "teacher_kd": 0.6 * ref_kl(t.logits, s.logits, 4.0),  # teacher learns from student
    }
    assert set(losses) == set(expect)
    for name, value in expect.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize("k", [2, 3])
def test_funcp_matches_eq7_on_path_k0(k):
    d = fixed(make(double=True, funcp_kl_weight=0.2, temperature=8.0), [(k, 0)])
    x, y = batch(dtype=torch.float64)
    _, losses = d(x, y)
    with torch.no_grad():
        t = d.teacher.features(x)
        f = d.b_ts[str(k)](t.stages[k - 1])  # B_ts^k(F_t^k) through M_s^{k+1..N} and C_s
        for stage in range(k + 1, 5):
            f = d.student.stage_forward(stage - 1, f)
        kl = ref_kl(d.student.head_forward(f), t.logits, 8.0)
    assert losses["funcp_kl"].item() == pytest.approx(0.2 * kl, rel=1e-9)
    assert losses["func_kl"].item() == 0.0 and losses["func_l2"].item() == 0.0


# --------------------------------------------------------------------- gradients
def _reached(d, loss: torch.Tensor) -> set[str]:
    d.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    parts = {f"s{i}": d.student.stage_modules(i) for i in range(4)}
    parts |= {f"t{i}": d.teacher.stage_modules(i) for i in range(4)}
    parts |= {"s_head": d.student.head_modules(), "t_head": d.teacher.head_modules()}
    parts |= {f"b_st{k}": m for k, m in d.b_st.items()}
    parts |= {f"b_ts{k}": m for k, m in d.b_ts.items()}
    return {n for n, m in parts.items()
            if any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())}


def test_targets_are_detached_and_the_teacher_is_a_fixed_lens_by_default():
    d = fixed(make(pooled_l2=False), [(2, 1), (2, 0)])
    x, y = batch()
    _, losses = d(x, y)
    student = {f"s{i}" for i in range(4)} | {"s_head"}
    teacher = {f"t{i}" for i in range(4)} | {"t_head"}
    assert _reached(d, losses["kd"]) == student
    assert _reached(d, losses["teacher_ce"]) == teacher
    assert _reached(d, losses["teacher_kd"]) == teacher
    assert _reached(d, losses["app"]) == {"s0", "s1", "s2", "s3", "b_st2", "b_st3", "b_st4"}
    # L_func flows through the teacher's stages 3, 4 and C_t to B_st^2 and the student only
    assert _reached(d, losses["func_kl"]) == {"s0", "s1", "b_st2"}
    assert _reached(d, losses["funcp_kl"]) == {"b_ts2", "s2", "s3", "s_head"}
    assert all(p.requires_grad for p in d.teacher.parameters())  # restored after the lens


def test_teacher_path_grad_lets_the_paths_train_the_teacher():
    d = fixed(make(pooled_l2=False, teacher_path_grad=True), [(2, 1), (2, 0)])
    x, y = batch()
    _, losses = d(x, y)
    assert _reached(d, losses["func_kl"]) == {"s0", "s1", "b_st2", "t2", "t3", "t_head"}
    assert _reached(d, losses["funcp_kl"]) == {"t0", "t1", "b_ts2", "s2", "s3", "s_head"}
    assert _reached(d, losses["kd"]) == {f"s{i}" for i in range(4)} | {"s_head"}


# --------------------------------------------------------------------- path-aware BN
def test_mixed_paths_leave_both_networks_statistics_as_a_pure_pass():
    x, y = batch()
    d = fixed(make(num_paths="all"), [(2, 1), (3, 1), (2, 0), (3, 0)])
    pure_t, pure_s = copy.deepcopy(d.teacher), copy.deepcopy(d.student)
    pure_t.train()
    pure_s.train()
    with torch.no_grad():
        pure_t(x)  # one pure teacher pass
        pure_s(x)  # one pure student pass
        d(x, y)
    for mine, pure in ((d.teacher, pure_t), (d.student, pure_s)):
        ref = pure.state_dict()
        for name, value in mine.state_dict().items():
            assert torch.equal(value, ref[name]), name
    for k in (2, 3):  # the teacher's own copies for <k, 1> were updated once
        stats = d.path_stats.paths[d.lens_name(k)]
        assert stats.bn0_num_batches_tracked.item() == 1
        first_bn = d.teacher.stage_modules(k)[0][1]
        assert not torch.equal(stats.bn0_running_mean, first_bn.running_mean)

    # without the swap the teacher's evaluated statistics would be spoiled
    mixed = fixed(make(num_paths="all", path_batching=False), [(2, 1), (3, 1)])
    mixed.path_stats.use = lambda name: contextlib.nullcontext()
    with torch.no_grad():
        mixed(x, y)
    assert not torch.equal(mixed.teacher.state_dict()["net.body.s3.1.running_mean"],
                           pure_t.state_dict()["net.body.s3.1.running_mean"])


def test_exported_teacher_evaluates_like_the_trained_one():
    d = make(num_paths="all")
    opt = torch.optim.SGD(d.parameters(), lr=0.05)
    x, y = batch()
    for _ in range(2):
        opt.zero_grad()
        sum(d(x, y)[1].values()).backward()
        opt.step()
    d.eval()
    nets = d.exported()
    assert set(nets) == {"student", "teacher"}
    assert nets["teacher"] is d.teacher.net and nets["student"] is d.student.net
    plain = copy.deepcopy(nets["teacher"]).eval()
    with torch.no_grad():
        assert torch.equal(plain(x), d.evaluated()["teacher"](x))


# --------------------------------------------------------------------- from a recipe
def test_teacher_built_by_name_for_the_students_data():
    student = build_model("resnet8", num_classes=N_CLS, in_channels=1, input_size=28)
    d = build_distiller("online_fcfd", {"teacher": "resnet20"}, student, None)
    assert d.teacher.kdlab_spec == {"model": "resnet20", "num_classes": N_CLS,
                                    "in_channels": 1, "input_size": 28}
    assert list(d.evaluated()) == ["student", "teacher"]
    assert d.exported()["teacher"].kdlab_spec["model"] == "resnet20"
    assert {n.split(".")[0] for n in d.state_dict()} >= {"student", "teacher_net", "b_st"}
    assert isinstance(d.teacher, nn.Module) and d.teacher in list(d.children())


def test_bad_input_gives_one_clear_message():
    student = tiny_staged()
    with pytest.raises(UserError, match="method.teacher"):
        build_distiller("online_fcfd", {}, student, None)
    with pytest.raises(UserError, match="Unknown model"):
        build_distiller("online_fcfd", {"teacher": "resnet_8"}, student, None)
    with pytest.raises(UserError, match="simkd"):
        build_distiller("online_fcfd", {"teacher": "resnet8", "simkd": True}, student, None)
    with pytest.raises(UserError, match="same classes"):
        build_distiller("online_fcfd", {}, student, tiny_staged(num_classes=5))


def _teacher_with_head_bn() -> Staged:
    """The tiny teacher layout plus a BN-ReLU before pooling (as in WRN / pre-act nets)."""
    torch.manual_seed(1)
    body, c_in = nn.Sequential(), 3
    for i, w in enumerate((16, 32, 64, 64)):
        body.add_module(f"s{i}", nn.Sequential(
            nn.Conv2d(c_in, w, 3, 2 if i in (1, 2) else 1, 1, bias=False),
            nn.BatchNorm2d(w), nn.ReLU()))
        c_in = w
    net = nn.Sequential()
    net.add_module("body", body)
    net.add_module("act", nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU()))
    net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.add_module("fc", nn.Linear(c_in, N_CLS))
    return Staged(net, stem=[], stages=[[f"body.s{i}"] for i in range(4)], pre_pool=["act"],
                  classifier=["fc"], input_shape=(3, 16, 16), num_classes=N_CLS)


@pytest.mark.parametrize("paths", [[], [(3, 1)]])
def test_the_teachers_head_statistics_stay_pure_too(paths):
    """<k, 1> paths run the teacher's pre-pool BN on bridged student features: those
    statistics go to the path's copies, not to the teacher. The pooled L_app term is the
    authors' ReLU + pool and runs no teacher module."""
    teacher = _teacher_with_head_bn()
    d = build_distiller("online_fcfd", {"pooled_l2": True, "l2_warmup_epochs": 0},
                        tiny_staged(seed=2), teacher)
    d = fixed(d.train(), paths)
    pure = copy.deepcopy(teacher).train()
    x, y = batch()
    with torch.no_grad():
        pure(x)
        d(x, y)
    ref = pure.state_dict()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, ref[name]), name
    assert "s2t_pool" not in d.path_stats.paths
