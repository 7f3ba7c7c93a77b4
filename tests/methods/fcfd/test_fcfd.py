"""FCFD (Liu et al., ICLR 2023): losses vs. the paper's equations, gradients, sampling,
path-aware BN, bad input, a few CPU steps and export."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from conftest import sgd_descent, tiny_staged
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.models.staged.view import Staged
from support.references import ref_kl, ref_l2

N_CLS = 10


# --------------------------------------------------------------------- slow references
def other_family(seed: int = 3) -> Staged:
    """A different layout: stride-2 in stages 1 and 2 (0-based 0, 1), pre-ReLU outputs."""
    torch.manual_seed(seed)
    body = nn.Sequential()
    c_in, widths = 3, (12, 24, 24, 48)
    for i, w in enumerate(widths):
        body.add_module(f"b{i}", nn.Sequential(
            nn.Conv2d(c_in, w, 3, 2 if i in (0, 1) else 1, 1, bias=False), nn.BatchNorm2d(w),
            nn.ReLU(), nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)))
        c_in = w
    net = nn.Sequential()
    net.add_module("body", body)
    net.add_module("act", nn.ReLU())
    net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.add_module("fc", nn.Linear(c_in, N_CLS))
    return Staged(net, stem=[], stages=[[f"body.b{i}"] for i in range(4)], pre_pool=["act"],
                  classifier=["fc"], input_shape=(3, 16, 16), num_classes=N_CLS)


def batch(n: int = 4, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64).to(dtype)
    return x, torch.randint(0, N_CLS, (n,), generator=g)


def make(tiny_pair, student=None, double=False, **opts):
    teacher, tiny_student = tiny_pair
    opts.setdefault("l2_warmup_epochs", 0)
    opts.setdefault("teacher_bn", "eval")  # the references below run the teacher as it is
    d = build_distiller("fcfd", opts, student or tiny_student, teacher)
    d.train()
    return d.double() if double else d  # float64: the references compare to 1e-9


def fixed(d, paths):
    d.sample_paths = lambda: list(paths)
    return d


# --------------------------------------------------------------------- the equations
@pytest.mark.parametrize("pooled", [False, True])
def test_app_loss_is_eq5_at_every_position(tiny_pair, pooled):
    d = fixed(make(tiny_pair, double=True, num_paths=0, pooled_l2=pooled, app_weight=0.5), [])
    x, y = batch(dtype=torch.float64)
    _, losses = d(x, y)
    teacher, student = d.teacher, d.student
    with torch.no_grad():
        t, s = teacher.features(x), student.features(x)
        ref = 0.0
        for k in (2, 3, 4):  # k_min = 2 .. N
            ref += ref_l2(d.b_st[str(k)](s.stages[k - 1]), t.stages[k - 1])
        if pooled:
            pool = torch.nn.functional.adaptive_avg_pool2d
            relu = torch.nn.functional.relu
            ref += ref_l2(pool(relu(d.b_st["4"](s.stages[3])), 1), pool(relu(t.stages[3]), 1))
    assert losses["app"].item() == pytest.approx(0.5 * ref, rel=1e-9)
    # no path drawn: the function terms are reported, as zeros
    assert set(losses) == {"ce", "kd", "app", "func_l2", "func_kl", "funcp_kl"}
    assert all(losses[n].item() == 0 for n in ("func_l2", "func_kl", "funcp_kl"))


def test_teacher_bn_batch_runs_targets_and_lens_on_batch_statistics(tiny_pair):
    """teacher_bn: batch is the authors' train-mode frozen teacher: the targets and the
    <k, 1> lens normalise with the statistics of their own batch; nothing is updated."""
    d = fixed(make(tiny_pair, double=True, pooled_l2=False, func_l2_weight=0.3,
                   func_kl_weight=0.7, app_weight=0.0, kd_weight=0.0, teacher_bn="batch"),
              [(2, 1)])
    frozen = copy.deepcopy(d.teacher.state_dict())
    x, y = batch(dtype=torch.float64)
    _, losses = d(x, y)
    train_mode = copy.deepcopy(d.teacher).train()
    with torch.no_grad():
        t = train_mode.features(x)
        f = d.b_st["2"](d.student.features(x).stages[1])
        out = train_mode.run_from(1, f)
        l2 = sum(ref_l2(a, b) for a, b in zip(out.stages, t.stages[2:], strict=True))
        kl = ref_kl(out.logits, t.logits, 4.0)
    assert losses["func_l2"].item() == pytest.approx(0.3 * l2, rel=1e-9)
    assert losses["func_kl"].item() == pytest.approx(0.7 * kl, rel=1e-9)
    assert all(torch.equal(v, frozen[k]) for k, v in d.teacher.state_dict().items())
    assert not d.teacher.training


@pytest.mark.parametrize("k", [2, 3])
def test_func_loss_is_eq6_for_a_fixed_path(tiny_pair, k):
    d = fixed(make(tiny_pair, double=True, pooled_l2=False, func_l2_weight=0.3, func_kl_weight=0.7,
                   temperature=4.0), [(k, 1)])
    x, y = batch(dtype=torch.float64)
    _, losses = d(x, y)
    teacher, student = d.teacher, d.student
    with torch.no_grad():
        t, s = teacher.features(x), student.features(x)
        f = d.b_st[str(k)](s.stages[k - 1])  # B_st^k(F_s^k)
        l2 = 0.0
        for stage in range(k + 1, 5):  # l = k+1 .. N: M_t^l o ... o M_t^{k+1}
            f = teacher.stage_forward(stage - 1, f)
            l2 += ref_l2(f, t.stages[stage - 1])
        kl = ref_kl(teacher.head_forward(f), t.logits, 4.0)  # l = N + 1: C_t
    assert losses["func_l2"].item() == pytest.approx(0.3 * l2, rel=1e-9)
    assert losses["func_kl"].item() == pytest.approx(0.7 * kl, rel=1e-9)
    assert losses["funcp_kl"].item() == 0.0  # no <k, 0> path drawn: reported as zero


@pytest.mark.parametrize("k", [2, 3])
def test_funcp_loss_is_eq7_and_app_g_l2(tiny_pair, k):
    d = fixed(make(tiny_pair, double=True, funcp_kl_weight=0.2, funcp_l2_weight=0.4,
                   temperature=8.0), [(k, 0)])
    x, y = batch(dtype=torch.float64)
    _, losses = d(x, y)
    teacher, student = d.teacher, d.student
    with torch.no_grad():
        t, s = teacher.features(x), student.features(x)
        f = d.b_ts[str(k)](t.stages[k - 1])  # B_ts^k(F_t^k)
        l2 = 0.0
        for stage in range(k + 1, 5):
            f = student.stage_forward(stage - 1, f)
            l2 += ref_l2(f, s.stages[stage - 1])
        kl = ref_kl(student.head_forward(f), t.logits, 8.0)  # KL(p_t || p_ts^k)
    assert losses["funcp_kl"].item() == pytest.approx(0.2 * kl, rel=1e-9)
    assert losses["funcp_l2"].item() == pytest.approx(0.4 * l2, rel=1e-9)


def test_partial_func_is_one_teacher_stage_l2_only(tiny_pair):
    d = fixed(make(tiny_pair, double=True, partial_func=True, func_l2_weight=1.0), [(2, 1)])
    x, y = batch(dtype=torch.float64)
    _, losses = d(x, y)
    with torch.no_grad():
        t, s = d.teacher.features(x), d.student.features(x)
        f = d.teacher.stage_forward(2, d.b_st["2"](s.stages[1]))  # M_t^3(B_st^2(F_s^2))
        ref = ref_l2(f, t.stages[2])
    assert losses["func_l2"].item() == pytest.approx(ref, rel=1e-9)
    assert "func_kl" not in losses


def test_kd_term_and_l2_warmup(tiny_pair):
    d = fixed(make(tiny_pair, double=True, l2_warmup_epochs=20, temperature=4.0), [])
    x, y = batch(dtype=torch.float64)
    logits, losses = d(x, y)
    with torch.no_grad():
        kd = ref_kl(logits, d.teacher.features(x).logits, 4.0)
    assert losses["kd"].item() == pytest.approx(kd, rel=1e-9)
    first = losses["app"].item()  # before any set_epoch: the warm-up's first epoch already
    d.set_epoch(25, 240)
    full = d(x, y)[1]["app"].item()
    assert first == pytest.approx(full / 20, rel=1e-4)
    d.set_epoch(0, 240)
    assert d(x, y)[1]["app"].item() == pytest.approx(first, rel=1e-9)


# --------------------------------------------------------------------- gradients
def _grad_sum(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_each_path_reaches_exactly_its_modules(tiny_pair):
    teacher = tiny_pair[0]
    x, y = batch()
    cases = {
        (2, 1): ("func_kl", {"b_st2", "s0", "s1"}),
        (3, 1): ("func_l2", {"b_st3", "s0", "s1", "s2"}),
        (2, 0): ("funcp_kl", {"b_ts2", "s2", "s3", "head"}),
        (3, 0): ("funcp_kl", {"b_ts3", "s3", "head"}),
    }
    for path, (name, expected) in cases.items():
        d = fixed(make(copy.deepcopy(tiny_pair), pooled_l2=False), [path])
        d.zero_grad(set_to_none=True)
        d(x, y)[1][name].backward()
        parts = {f"b_st{k}": m for k, m in d.b_st.items()}
        parts |= {f"b_ts{k}": m for k, m in d.b_ts.items()}
        parts |= {f"s{i}": d.student.stage_modules(i) for i in range(4)}
        parts["head"] = d.student.head_modules()
        reached = {n for n, m in parts.items() if _grad_sum(m) > 0}
        assert reached == expected, (path, reached)
        assert all(p.grad is None for p in d.teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_is_not_a_parameter_and_stays_frozen(tiny_pair):
    d = make(tiny_pair, num_paths="all")
    x, y = batch()
    sum(d(x, y)[1].values()).backward()
    teacher_params = {id(p) for p in d.teacher.parameters()}
    assert not teacher_params & {id(p) for p in d.parameters()}
    assert not d.teacher.training and all(not p.requires_grad for p in d.teacher.parameters())
    assert not any(k.startswith("_teacher") for k in d.state_dict())


# --------------------------------------------------------------------- sampling
def test_sampling_reproducible_covers_all_and_all_means_each_once(tiny_pair):
    d = make(tiny_pair)
    assert d.candidates == [(2, 1), (3, 1), (2, 0), (3, 0)]
    assert d.may_skip_parameters

    def draws(seed: int, n: int) -> list[list[tuple[int, int]]]:
        torch.manual_seed(seed)
        return [d.sample_paths() for _ in range(n)]

    a, b = draws(7, 50), draws(7, 50)
    assert a == b and a != draws(8, 50)
    assert all(len(p) == 2 and len(set(p)) == 2 for p in a)
    seen = {path for paths in draws(0, 200) for path in paths}
    assert seen == set(d.candidates)
    every = make(tiny_pair, num_paths="all")
    assert sorted(every.sample_paths()) == sorted(every.candidates)
    assert not every.may_skip_parameters


def test_positions_kmin_and_directions_settings(tiny_pair):
    assert make(tiny_pair, k_min=3).candidates == [(3, 1), (3, 0)]
    assert make(tiny_pair, k_min=3).app_positions == [3, 4]
    assert make(tiny_pair, k_min=1, num_paths=1).candidates == [
        (1, 1), (2, 1), (3, 1), (1, 0), (2, 0), (3, 0)]
    d = make(tiny_pair, positions=[3], directions="s2t", num_paths=1)
    assert d.candidates == [(3, 1)] and len(d.b_ts) == 0
    assert make(tiny_pair, directions="t2s").candidates == [(2, 0), (3, 0)]


# --------------------------------------------------------------------- path-aware BN
def test_mixed_paths_leave_the_students_statistics_alone(tiny_pair):
    x, y = batch(8)
    d = fixed(make(tiny_pair), [(2, 0), (3, 0)])
    pure = copy.deepcopy(d.student)
    pure.train()
    with torch.no_grad():
        pure(x)  # the pure student pass alone
        d(x, y)
    for (name, a), b in zip(d.student.state_dict().items(), pure.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    stats = d.path_stats.paths[d.path_name(2)]
    assert stats.bn0_num_batches_tracked.item() == 1  # the path's own copy was updated

    # without the swap the same step would corrupt the evaluated student
    mixed = fixed(make(tiny_pair, path_batching=False), [(2, 0), (3, 0)])  # one pass per path
    mixed.path_stats.use = lambda name: contextlib.nullcontext()
    with torch.no_grad():
        mixed(x, y)
    mixed.eval()
    pure.eval()
    assert not torch.allclose(mixed.student(x), pure(x), atol=1e-4)


# --------------------------------------------------------------------- bad input
def test_bad_input_gives_one_clear_message(tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(UserError, match="same number of stages"):
        build_distiller("fcfd", {}, tiny_staged(widths=(8, 16, 32)), teacher)
    with pytest.raises(UserError, match=r"positions\[0\] must be at least 1"):
        build_distiller("fcfd", {"positions": [0, 2]}, student, teacher)  # the field's range
    with pytest.raises(UserError, match="outside the stages"):
        build_distiller("fcfd", {"positions": [2, 5]}, student, teacher)  # the networks' stages
    with pytest.raises(UserError, match="outside the stages"):
        build_distiller("fcfd", {"app_positions": [5]}, student, teacher)
    with pytest.raises(UserError, match=r"set method.k_min to a stage in 1\.\.\d"):
        build_distiller("fcfd", {"k_min": 7}, student, teacher)
    with pytest.raises(UserError, match="num_paths"):
        build_distiller("fcfd", {"num_paths": 5}, student, teacher)
    with pytest.raises(UserError, match="num_paths"):
        build_distiller("fcfd", {"num_paths": "many"}, student, teacher)
    with pytest.raises(UserError, match="teacher"):
        build_distiller("fcfd", {}, student, None)
    with pytest.raises(UserError, match="Unknown key"):
        build_distiller("fcfd", {"temprature": 4}, student, teacher)
    big = tiny_staged(widths=(16, 32, 64, 64), input_size=64)
    with pytest.raises(UserError, match="factor of 2"):
        build_distiller("fcfd", {}, student, big)


# --------------------------------------------------------------------- training and export
@pytest.mark.parametrize("family", ["same", "different"])
def test_a_few_steps_lower_the_loss_and_export_matches(tiny_pair, family):
    student = other_family() if family == "different" else None
    d = make(tiny_pair, student=student, num_paths="all", app_weight=1.0, func_l2_weight=1.0)
    if family == "different":
        assert {m.kind for m in d.b_st.values()} >= {"up"}  # 4x4 vs teacher 8x8 at k=2
    x, y = batch(16)
    totals = sgd_descent(d, (x, y), 12)
    assert totals[-1] < 0.7 * totals[0], totals

    # sampled paths (|S| = 2) also run
    d.sample_paths = type(d).sample_paths.__get__(d)
    d.num_paths = 2
    assert all(torch.isfinite(v) for v in d(x, y)[1].values())

    d.eval()
    plain = d.exported()["student"]
    fresh = copy.deepcopy(plain)
    fresh.load_state_dict({k: v.clone() for k, v in plain.state_dict().items()})
    fresh.eval()
    with torch.no_grad():
        ours = d.evaluated()["student"](x)
        assert torch.equal(ours, plain(x))
        assert torch.equal(ours, fresh(x))
    assert type(plain) is nn.Sequential  # an ordinary model, no distiller extras


def test_simkd_head_reuses_the_teacher_classifier(tiny_pair):
    d = make(tiny_pair, simkd=True, num_paths="all")
    x, y = batch(8)
    logits, losses = d(x, y)
    assert logits.shape == (8, N_CLS) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert _grad_sum(d.b_st["4"]) > 0  # the SimKD projector is B_st^4
    assert all(p.grad is None for p in d.simkd_head.parameters())  # C_t stays frozen
    d.eval()
    deployed = d.evaluated()["student"]
    assert deployed is d.exported()["student"] and deployed is not d.student
    with torch.no_grad():
        want = d.simkd_head(d.b_st["4"](d.student.features(x).stages[-1]))
        assert torch.equal(deployed(x), want)


def test_fcfd_plus_dkd_replaces_every_kl_with_dkd(tiny_pair):
    """FCFD+DKD (App. C.1): L_kd, L_func-KL and L_func' use DKD (TCKD 1, NCKD 2)."""
    from kdlab.methods.shared.logits import dkd_loss

    d = fixed(make(tiny_pair, double=True, logit_loss="dkd", temperature=4.0), [(2, 1), (2, 0)])
    x, y = batch()
    x = x.double()
    teacher, student = d.teacher, d.student
    logits, losses = d(x, y)
    with torch.no_grad():
        t = teacher.features(x)
        expected_kd = dkd_loss(logits, t.logits, y, alpha=1.0, beta=2.0, temperature=4.0)
        via_teacher = teacher.run_from(1, d.b_st["2"](student.features(x).stages[1])).logits
    assert losses["kd"].item() == pytest.approx(expected_kd.item(), rel=1e-9)
    expected_func = dkd_loss(via_teacher, t.logits, y, alpha=1.0, beta=2.0, temperature=4.0)
    assert losses["func_kl"].item() == pytest.approx(expected_func.item(), rel=1e-6)
    assert torch.isfinite(losses["funcp_kl"]) and losses["funcp_kl"].item() > 0
