"""AT (Zagoruyko & Komodakis, ICLR 2017): which stages are paired, and the loss as beta times
the sum of the attention-map distances over the stages after the stem."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import build_distiller


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, y, torch.arange(b)


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
