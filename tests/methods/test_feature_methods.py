"""Feature-based methods (AT, SimKD, ReviewKD, CRD, VID, OFD) on tiny CPU networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import sgd_descent
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.base import Batch
from kdlab.models import MODELS
from kdlab.models.staged.view import Staged

OPTIONS = {
    "at": {},
    "simkd": {},
    "reviewkd": {"warmup_epochs": 0},
    "crd": {"num_negatives": 16, "negatives": "uniform"},
    "vid": {},
    "ofd": {},
}
TRAIN_SIZE = 64


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, y, torch.arange(b)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_method_trains_and_teacher_gets_no_gradient(name, tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller(name, OPTIONS[name], student, teacher, train_size=TRAIN_SIZE)
    if name == "crd":
        d.memory.eval()  # banks fixed: a stationary objective, so the loss must fall
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    def inspect(step, logits, losses):
        assert logits.shape == (8, 10) and set(losses)

    totals = sgd_descent(d, _batch(), 6, lr=0.02, trainable_only=True,
                         reseed=lambda step: 1,  # same CRD negatives each step
                         inspect=inspect)
    assert totals[-1] < totals[0], totals
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k  # BN statistics of the teacher untouched
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# --------------------------------------------------------------------- AT
def test_at_pools_mismatched_sizes(tiny_pair):
    from conftest import tiny_staged

    teacher, _ = tiny_pair
    student = tiny_staged(widths=(8, 16, 32), input_size=16, seed=3)  # 3 stages
    d = build_distiller("at", {}, student, teacher)
    assert d.pairs == [(1, 2), (2, 3)]  # the stage outputs after the stems, deepest aligned
    assert build_distiller("at", {"include_stem": True}, student, teacher).pairs == [
        (0, 1), (1, 2), (2, 3)]
    x, y, _ = _batch()
    _, losses = d(x, y)
    assert torch.isfinite(losses["at"]) and losses["at"] > 0
    with pytest.raises(UserError, match="Stage 5"):
        build_distiller("at", {"stages": [5]}, student, teacher)


def test_at_is_beta_times_the_sum_over_the_stages_after_the_stem(tiny_pair):
    from kdlab.methods.shared.attention import at_loss

    teacher, student = tiny_pair
    d = build_distiller("at", {"beta": 7.0}, student, teacher)
    x, y, _ = _batch()
    with torch.no_grad():
        _, losses = d(x, y)
        s, t = student.features(x), teacher.features(x)
    want = 7.0 * sum(at_loss(s.stages[i], t.stages[i]) for i in (1, 2, 3))
    torch.testing.assert_close(losses["at"], want)
    for name in ("vid", "ofd"):
        assert build_distiller(name, {}, student, teacher).pairs == [(1, 1), (2, 2), (3, 3)]


# --------------------------------------------------------------------- SimKD
def test_simkd_exported_module_gives_the_evaluated_logits(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("simkd", {}, student, teacher)
    x, y, _ = _batch()
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        _, losses = d(x, y)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    d.eval()
    exported = d.exported()["student"]
    evaluated = d.evaluated()["student"]
    with torch.no_grad():
        projected, _ = d.deployable.features(x)
        manual = teacher.head_forward(projected)  # the teacher's own classifier
        out_eval = evaluated(x)
        out_exp = exported(x)
        out_d, _ = d(x, y)
    assert torch.allclose(out_eval, out_exp)
    assert torch.allclose(out_d, out_exp)
    assert torch.allclose(manual, out_exp, atol=1e-6)
    # the reused head is frozen and the teacher's classifier untouched
    assert all(not p.requires_grad for p in d.head.parameters())
    fc_t = teacher.classifier_modules()[0]
    assert torch.equal(d.head.classifier[0].weight, fc_t.weight)
    cost = d.extra_inference_cost()
    assert cost["params"] == sum(p.numel() for p in d.projector.parameters())
    # 1x1 32->32, 3x3 32->32, 1x1 32->64 at 4x4 positions
    assert cost["macs"] == 16 * (32 * 32 + 32 * 32 * 9 + 32 * 64)


# --------------------------------------------------------------------- ReviewKD
def test_reviewkd_shapes_and_warmup(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("reviewkd", {}, student, teacher)
    x, y, _ = _batch()
    s = student.features(x)
    fused = d.review([*s.stages[1:], s.embedding[:, :, None, None]])  # stage 0: the stem
    t = teacher.features(x)
    assert [f.shape for f in fused] == [*(f.shape for f in t.stages[1:]), (8, 64, 1, 1)]
    d.set_epoch(0, 240)
    _, l0 = d(x, y)
    d.set_epoch(19, 240)
    _, l19 = d(x, y)
    d.set_epoch(100, 240)
    _, l100 = d(x, y)
    assert l0["review"].item() == pytest.approx(l19["review"].item() / 20, rel=1e-4)
    assert l100["review"].item() == pytest.approx(l19["review"].item(), rel=1e-4)


@pytest.mark.parametrize("features", ["pre_relu", "stage_outputs"])
def test_reviewkd_targets_are_the_teachers_pre_relu_or_stage_outputs(features, tiny_pair):
    """``pre_relu`` (the authors' ``preact=True``, mdistiller's ``preact_feats``): HCL
    against the teacher's stage outputs before their ReLU; ``stage_outputs``: after it."""
    from kdlab.methods.reviewkd.losses import hcl_loss

    teacher, student = tiny_pair
    d = build_distiller("reviewkd", {"warmup_epochs": 0, "teacher_features": features},
                        student, teacher)
    x, y, _ = _batch()
    _, losses = d(x, y)
    with torch.no_grad():
        pre, post, h = [], [], x
        for stage in teacher.net.body:  # conv-BN-ReLU stages: pre-ReLU = after the BN
            pre.append(stage[:2](h))
            h = stage(h)
            post.append(h)
        s, t = student.features(x), teacher.features(x)
        fused = d.review([*s.stages[1:], s.embedding[:, :, None, None]])
        maps = pre if features == "pre_relu" else post
        want = hcl_loss(fused, [*maps[1:], t.embedding[:, :, None, None]], (4, 2, 1))
    assert losses["review"].item() == pytest.approx(want.item(), rel=1e-6)
    assert any((p < 0).any() for p in pre[1:])  # the two settings do differ here


def test_reviewkd_teacher_features_must_be_known(tiny_pair):
    with pytest.raises(UserError, match="teacher_features"):
        build_distiller("reviewkd", {"teacher_features": "post"}, *reversed(tiny_pair))


def _abf_channels(d) -> list[tuple[int, int]]:
    return [(m.conv1[0].in_channels, m.conv2[0].out_channels) for m in d.abfs]


def test_reviewkd_reviews_the_authors_levels_not_the_stem():
    """The authors' CIFAR code: layer1..3 and the pool, ``in_channels = [16, 32, 64, 64]``."""
    student = MODELS.get("resnet8")(num_classes=10)
    teacher = MODELS.get("resnet20")(num_classes=10)
    assert not student.stem_names and student.num_stages == 4  # stage 0 is the stem conv
    assert student.stages_after_stem() == [1, 2, 3]
    d = build_distiller("reviewkd", {}, student, teacher)
    assert d.num_stages == 3 and len(d.abfs) == 4
    assert _abf_channels(d) == [(16, 16), (32, 32), (64, 64), (64, 64)]
    assert d.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]
    x = torch.randn(2, 3, 32, 32)
    _, losses = d(x, torch.arange(2))
    assert torch.isfinite(losses["review"])
    # method.levels overrides: all four stages, the stem included
    d = build_distiller("reviewkd", {"levels": 4}, student, teacher)
    assert _abf_channels(d) == [(16, 16), (16, 16), (32, 32), (64, 64), (64, 64)]
    with pytest.raises(UserError, match=r"method\.reviewkd\.levels must be at least 1"):
        build_distiller("reviewkd", {"levels": 0}, student, teacher)  # the field's range
    with pytest.raises(UserError, match=r"method\.levels must be between 1 and 4"):
        build_distiller("reviewkd", {"levels": 5}, student, teacher)  # the networks' stages


def test_reviewkd_keeps_every_stage_when_the_stem_is_named_apart(tiny_pair):
    def stem_apart(view: Staged) -> Staged:  # the same network, its stage 0 named the stem
        return Staged(view.net, stem=view.stage_names[0], stages=view.stage_names[1:],
                      classifier=view.classifier_names, input_shape=view.input_shape,
                      num_classes=view.num_classes)

    teacher, student = (stem_apart(v) for v in tiny_pair)
    assert student.stem_names and student.stages_after_stem() == [0, 1, 2]
    d = build_distiller("reviewkd", {}, student, teacher)
    assert d.num_stages == 3
    assert _abf_channels(d) == [(16, 32), (32, 64), (32, 64), (32, 64)]
    # the empty-stem views of the same networks review the same three stages
    d_zoo = build_distiller("reviewkd", {}, *reversed(tiny_pair))
    assert _abf_channels(d_zoo) == _abf_channels(d)


# --------------------------------------------------------------------- CRD
def test_crd_memory_bank_update_rule_and_state_dict(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("crd", OPTIONS["crd"], student, teacher, train_size=TRAIN_SIZE)
    state = d.state_dict()
    for key in ("memory.bank_student", "memory.bank_teacher", "memory.z_student"):
        assert key in state
    assert state["memory.bank_student"].shape == (TRAIN_SIZE, 128)
    x, y, _ = _batch()
    idx = torch.tensor([3, 10, 11, 20, 40, 41, 50, 63])
    old_s = d.memory.bank_student.clone()
    old_t = d.memory.bank_teacher.clone()
    d.train()
    d(x, y, idx)
    with torch.no_grad():
        v_s = d.embed_student(student.features(x).embedding)
        v_t = d.embed_teacher(teacher.features(x).embedding)
    for row, i in enumerate(idx.tolist()):
        banks = ((old_s, d.memory.bank_student, v_s), (old_t, d.memory.bank_teacher, v_t))
        for old, new, v in banks:
            want = 0.5 * old[i] + 0.5 * v[row]
            want = want / want.norm()
            assert torch.allclose(new[i], want, atol=1e-5)
    untouched = torch.ones(TRAIN_SIZE, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(d.memory.bank_student[untouched], old_s[untouched])
    # Z constants are fixed after the first batch and restored from a checkpoint
    assert d.memory.z_student > 0
    d2 = build_distiller("crd", {"num_negatives": 16}, student, teacher, train_size=TRAIN_SIZE)
    d2.load_state_dict(d.state_dict())
    assert torch.equal(d2.memory.bank_teacher, d.memory.bank_teacher)
    assert torch.equal(d2.memory.z_teacher, d.memory.z_teacher)


@pytest.mark.parametrize("dense", [True, False])
def test_crd_scores_match_the_formula_and_both_scorings_agree(dense, monkeypatch):
    """score_ij = exp(<v_i, m_{rows_ij}> / T) / Z with Z = mean(first scores) * N (the NCE
    memory of Tian et al. 2020, Sec. 3), by a loop; the dense (GEMM + pick) and the gathered
    scoring give the same scores and the same gradient to the embeddings."""
    from kdlab.methods.crd import memory_bank
    from kdlab.methods.crd.memory_bank import ContrastMemory

    monkeypatch.setattr(memory_bank, "DENSE_SCORING_MAX_RATIO", 10**6 if dense else 0)
    torch.manual_seed(0)
    n, b, k, dim, temp = 30, 4, 7, 5, 0.5
    mem = ContrastMemory(dim, n, k, temperature=temp)  # training: the banks move after scoring
    v_s = F.normalize(torch.randn(b, dim), dim=1).requires_grad_()
    v_t = F.normalize(torch.randn(b, dim), dim=1).requires_grad_()
    index = torch.tensor([0, 7, 7, 29])
    rows = memory_bank.sample_negatives(index, n, k, torch.Generator().manual_seed(1))
    bank_s, bank_t = mem.bank_student.clone(), mem.bank_teacher.clone()
    s, t = mem(v_s, v_t, index, rows=rows)
    assert not torch.equal(mem.bank_teacher, bank_t)
    for scores, v, bank, z in ((s, v_s, bank_t, mem.z_student),
                               (t, v_t, bank_s, mem.z_teacher)):
        raw = torch.empty(b, k + 1, dtype=torch.float64)
        for i in range(b):
            for j in range(k + 1):
                dot = sum(float(v[i, c].detach()) * float(bank[rows[i, j], c]) for c in range(dim))
                raw[i, j] = torch.exp(torch.tensor(dot / temp, dtype=torch.float64))
        assert float(z) == pytest.approx(float(raw.mean()) * n, rel=1e-5)
        assert torch.allclose(scores.double(), raw / float(z), rtol=1e-5)
    (s.log().sum() + t.log().sum()).backward()
    # d/dv_i sum_j log score_ij = sum_j m_{rows_ij} / T, whatever the scoring
    want_s = bank_t[rows].sum(1) / temp
    assert torch.allclose(v_s.grad, want_s, atol=1e-5)


def test_crd_negatives_exclude_the_positive():
    from kdlab.methods.crd.memory_bank import sample_negatives

    idx = torch.tensor([0, 5, 9])
    rows = sample_negatives(idx, 10, 500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rows[:, 0], idx)
    for r, i in enumerate(idx.tolist()):
        negatives = rows[r, 1:]
        assert (negatives != i).all()
        assert negatives.min() >= 0 and negatives.max() < 10
        assert len(set(negatives.tolist())) == 9  # every other sample is drawn


def test_crd_class_negatives_are_distinct_samples_of_other_classes():
    """The CRD authors' CIFAR loader (mode 'exact'): k negatives of other classes, without
    replacement, or with replacement where a class has fewer than k other-class samples."""
    from kdlab.methods.crd.memory_bank import sample_class_negatives

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    idx = torch.tensor([0, 3, 9])
    rows = sample_class_negatives(idx, labels, 6, generator=torch.Generator().manual_seed(0))
    assert rows.shape == (3, 7) and torch.equal(rows[:, 0], idx)
    for r, i in enumerate(idx.tolist()):
        negatives = rows[r, 1:].tolist()
        assert all(labels[j] != labels[i] for j in negatives)
        assert len(set(negatives)) == 6  # 7, 8 and 9 other-class samples: no repeats
    few = sample_class_negatives(torch.tensor([5]), labels, 7,
                                 generator=torch.Generator().manual_seed(1))
    assert all(labels[j] != 2 for j in few[0, 1:].tolist())  # 6 candidates for 7: repeats
    with pytest.raises(UserError, match="two classes"):
        sample_class_negatives(idx, torch.zeros(10, dtype=torch.long), 3)


def test_crd_draws_class_negatives_from_the_training_labels(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("crd", {"num_negatives": 16}, student, teacher, train_size=TRAIN_SIZE)
    assert d.cfg.negatives == "class"  # the authors' (and the default)
    x, y, idx = _batch()
    with pytest.raises(UserError, match="negatives: uniform"):
        d(x, y, idx)  # no training labels handed over
    labels = torch.arange(TRAIN_SIZE) % 10
    d.use_train_labels(labels)
    rows = d.memory.draw_rows(idx)
    assert (labels[rows[:, 1:]] != labels[idx].view(-1, 1)).all()
    _, losses = d(x, y, idx)
    assert torch.isfinite(losses["crd"])
    with pytest.raises(UserError, match="one label per training sample"):
        d.use_train_labels(labels[:10])


def test_the_trainer_hands_the_training_labels_over():
    from kdlab.data.base import train_labels
    from kdlab.data.device_loader import TensorLoader

    images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    loader = TensorLoader(images, torch.tensor([3, 1, 4, 1, 5, 9]), batch_size=2,
                          device=torch.device("cpu"), mean=(0.0,), std=(1.0,), train=True)
    assert train_labels(loader).tolist() == [3, 1, 4, 1, 5, 9]
    assert train_labels(object()) is None


def test_crd_user_errors(tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(UserError, match="num_negatives below 64"):
        build_distiller("crd", {}, student, teacher, train_size=TRAIN_SIZE)
    with pytest.raises(UserError, match="training-set size"):
        build_distiller("crd", {"num_negatives": 16}, student, teacher)
    d = build_distiller("crd", {"num_negatives": 16}, student, teacher, train_size=TRAIN_SIZE)
    x, y, idx = _batch()
    with pytest.raises(UserError, match="dataset index"):
        d(x, y)
    with pytest.raises(UserError, match="one index per image"):
        d(x, y, idx[:4])


# --------------------------------------------------------------------- VID
def test_vid_initial_variance(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("vid", {}, student, teacher)
    for reg in d.regressors:
        assert torch.allclose(reg.variance(), torch.full_like(reg.variance(), 5.0), atol=1e-5)


# --------------------------------------------------------------------- OFD
def test_ofd_taps_pre_relu_features(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("ofd", {}, student, teacher)
    x, _, _ = _batch()
    with torch.no_grad(), d.teacher_tap:
        out = teacher.features(x)
        pre = d.teacher_tap.features(out)
    assert d.teacher_tap.stages == [1, 2, 3]  # after the stem
    for i, p in zip(d.teacher_tap.stages, pre, strict=True):
        stage = teacher.stage_modules(i)[0]  # conv, BN, ReLU
        want = stage[1](stage[0](out.stages[i - 1]))
        assert torch.allclose(p, want, atol=1e-6)
        assert (p < 0).any()  # really before the ReLU
    margins = d.teacher_tap.margins()
    assert [m.shape[0] for m in margins] == [32, 64, 64]
    assert all((m < 0).all() for m in margins)


def _staged_inplace_relu(functional: bool) -> Staged:
    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return F.relu(y) if functional else self.relu(y)

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("b0", Block(3, 8))
    net.add_module("b1", Block(8, 8))
    net.add_module("fc", nn.Linear(8, 10))
    return Staged(net, stem=[], stages=[["b0"], ["b1"]], classifier=["fc"],
                  input_shape=(3, 16, 16), num_classes=10)


def test_ofd_inplace_relu_module_and_functional_relu(tiny_pair):
    teacher, _ = tiny_pair
    student = _staged_inplace_relu(functional=False)
    d = build_distiller("ofd", {}, student, teacher)
    x, y, _ = _batch()
    with d.student_tap:
        out = student.features(x)
        pre = d.student_tap.features(out)
    assert (pre[-1] < 0).any() and torch.allclose(F.relu(pre[-1]), out.stages[-1])
    _, losses = d(x, y)
    assert torch.isfinite(losses["ofd"])
    with pytest.raises(UserError, match="pre-ReLU feature of student stage"):
        build_distiller("ofd", {}, _staged_inplace_relu(functional=True), teacher)


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["at", "vid", "ofd", "reviewkd"])
def test_mismatched_batch_is_a_user_error(name, tiny_pair, monkeypatch):
    teacher, student = tiny_pair
    d = build_distiller(name, OPTIONS[name], student, teacher, train_size=TRAIN_SIZE)
    x, y, _ = _batch()
    real = d.teacher_source.features
    monkeypatch.setattr(d.teacher_source, "features",
                        lambda batch: real(Batch(batch.images[:4])))
    with pytest.raises(UserError):
        d(x, y)


def test_crd_runs_in_float64(tiny_pair):
    """The parity checks run whole methods in float64: the banks follow the model's dtype."""
    teacher, student = tiny_pair
    d = build_distiller("crd", {"num_negatives": 8, "negatives": "uniform"}, student, teacher,
                        train_size=TRAIN_SIZE).double()
    x, y, idx = _batch()
    _, losses = d(x.double(), y, idx)
    assert losses["crd"].dtype == torch.float64 and torch.isfinite(losses["crd"])
    assert d.memory.bank_student.dtype == torch.float64
    losses["crd"].backward()
