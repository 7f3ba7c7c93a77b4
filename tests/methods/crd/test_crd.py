"""CRD (Tian et al., ICLR 2020): the memory banks' update rule and state, the NCE scores
against the formula, negative sampling, user errors and float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlab.errors import UserError
from kdlab.methods import build_distiller

TRAIN_SIZE = 64
#: negatives drawn without the training labels (the tests hand none over)
UNIFORM = {"num_negatives": 16, "negatives": "uniform"}


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, y, torch.arange(b)


def test_crd_memory_bank_update_rule_and_state_dict(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("crd", UNIFORM, student, teacher, train_size=TRAIN_SIZE)
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
