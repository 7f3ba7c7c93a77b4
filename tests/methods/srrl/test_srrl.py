"""SRRL (Yang et al., ICLR 2021): the two terms against a direct computation, gradients,
export, bad input, recipes."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.srrl.losses import srrl_feature_loss, srrl_softmax_regression_loss
from support.references import ref_l2


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64), torch.arange(n) % 10


def test_terms_match_a_direct_computation(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("srrl", {"fm_weight": 0.7, "sr_weight": 1.3}, student, teacher).double()
    d.train()
    x, y = _batch()
    _, losses = d(x, y)
    with torch.no_grad():
        s, t = student.features(x), teacher.features(x)
        f = s.stages[-1]  # (b, 32, 4, 4)
        conv, bn = d.connector[0], d.connector[1]
        z = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], f)
        mean = z.mean(dim=(0, 2, 3), keepdim=True)  # train-mode BN: batch statistics
        var = z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        z = (z - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) \
            + bn.bias.view(1, -1, 1, 1)
        h_s = z.clamp_min(0).mean(dim=(2, 3))  # ReLU, the teacher's global average pool
        fc = teacher.net.fc
        regressed = h_s @ fc.weight.t() + fc.bias
    assert losses["ce"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(s.logits, y).item(), rel=1e-9)
    assert losses["srrl_fm"].item() == pytest.approx(0.7 * ref_l2(h_s, t.embedding), rel=1e-9)
    assert losses["srrl_sr"].item() == pytest.approx(1.3 * ref_l2(regressed, t.logits), rel=1e-9)


def test_gradients_reach_connector_and_student_never_teacher(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("srrl", {}, student, teacher).train()
    x, y = _batch()
    _, losses = d(x.float(), y)
    (losses["srrl_fm"] + losses["srrl_sr"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.connector.parameters())
    last = [p.grad for p in student.stage_modules(student.num_stages - 1).parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in last)
    assert all(p.grad is None for p in student.classifier_modules().parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())
    assert d.exported()["student"] is student.net  # the connector is training-only


def test_bad_input_is_a_user_error(tiny_pair):
    from conftest import tiny_staged

    teacher, _ = tiny_pair
    with pytest.raises(UserError, match="same classes"):
        build_distiller("srrl", {}, tiny_staged(num_classes=7), teacher)
    with pytest.raises(UserError, match="connector"):
        srrl_feature_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(UserError, match="same classes"):
        srrl_softmax_regression_loss(torch.zeros(2, 3), torch.zeros(2, 4))
