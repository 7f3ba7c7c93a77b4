"""FitNet: hint loss against the formula; gradients reach bridge and student, not teacher."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.shared.hint import hint_loss


def test_hint_loss_matches_direct_formula():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    total, count = 0.0, 0
    for i in range(2):
        for c in range(3):
            for h in range(4):
                for w in range(5):
                    total += (a[i, c, h, w].item() - b[i, c, h, w].item()) ** 2
                    count += 1
    assert hint_loss(a, b).item() == pytest.approx(total / count, rel=1e-6)
    with pytest.raises(UserError, match="bridge"):
        hint_loss(a, b[:, :2])


def test_gradients_reach_bridge_and_student_never_teacher(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("fitnet", {"position": 2}, student, teacher)
    d.train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    logits, losses = d(x, y)
    assert set(losses) == {"ce", "hint"} and logits.shape == (4, 10)
    losses["hint"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.bridge.parameters())
    # the hint at stage 2 reaches the student's stages 1-2, not 3-4 or the classifier
    for i, reached in enumerate([True, True, False, False]):
        grads = [p.grad for p in student.stage_modules(i).parameters()]
        assert all((g is not None and g.abs().sum() > 0) == reached for g in grads)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in d.parameters() for q in teacher.parameters())


def test_hint_value_is_the_weighted_formula(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("fitnet", {"hint_weight": 3.0, "position": 3}, student, teacher)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 10, (2,))
    _, losses = d(x, y)
    with torch.no_grad():
        ref = hint_loss(d.bridge(student.features(x).stages[2]), teacher.features(x).stages[2])
    # the bridge's BN is in train mode in both passes: batch statistics, same batch
    assert losses["hint"].item() == pytest.approx(3.0 * ref.item(), rel=1e-5)


def test_bad_position_is_a_user_error(tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(UserError, match="1..4"):
        build_distiller("fitnet", {"position": 5}, student, teacher)
    with pytest.raises(UserError, match="teacher"):
        build_distiller("fitnet", {}, student, None)


def test_default_hint_is_the_benchmarks_hint_layer_2(tiny_pair):
    """RepDistiller's hint_layer=2 is feat[2] with feat[0] the stem: the zoo's stages[2]."""
    teacher, student = tiny_pair
    d = build_distiller("fitnet", {}, student, teacher)
    assert d.cfg.position == 3
    assert d.bridge[1].num_features == teacher.stage_info[2].channels  # conv, BN, ...


@pytest.mark.parametrize(("size_s", "size_t", "kind"), [
    (8, 8, "1x1"), (16, 8, "stride2"), (4, 8, "transposed"), (10, 8, "valid3")])
def test_convreg_is_the_benchmarks_regressor(size_s, size_t, kind):
    from kdlab.methods.fitnet.regressor import ConvRegressor
    from kdlab.models.staged.view import StageInfo

    reg = ConvRegressor(StageInfo(6, size_s, size_s, True), StageInfo(5, size_t, size_t, True))
    conv = reg[0]
    assert conv.bias is not None and isinstance(reg[2], torch.nn.ReLU)
    want = {"1x1": (1, 1), "stride2": (3, 3), "transposed": (4, 4), "valid3": (3, 3)}[kind]
    assert tuple(conv.kernel_size) == want
    assert isinstance(conv, torch.nn.ConvTranspose2d) == (kind == "transposed")
    assert reg(torch.randn(2, 6, size_s, size_s)).shape == (2, 5, size_t, size_t)
    with pytest.raises(UserError, match="regressor"):
        ConvRegressor(StageInfo(6, 3, 3, True), StageInfo(5, 8, 8, True))


def test_fitnet_with_the_benchmarks_regressor_trains_it(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("fitnet", {"regressor": "convreg"}, student, teacher).train()
    _, losses = d(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,)))
    losses["hint"].backward()
    assert all(p.grad is not None for p in d.bridge.parameters())
    with pytest.raises(UserError, match="regressor"):
        build_distiller("fitnet", {"regressor": "mlp"}, student, teacher)
