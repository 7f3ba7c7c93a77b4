"""CC: the CRD benchmark's formulation (default) and the paper's kernel correlation."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.shared.relations import cc_benchmark_loss, cc_loss


def ref_cc_benchmark(s: torch.Tensor, t: torch.Tensor) -> float:
    """Mean over consecutive samples i of sum_d |s_i - t_i|_d * |s_i+1 - t_i+1|_d, by loops."""
    rows = [[abs(a - b) for a, b in zip(rs, rt, strict=True)]
            for rs, rt in zip(s.tolist(), t.tolist(), strict=True)]
    terms = [sum(x * y for x, y in zip(rows[i], rows[i + 1], strict=True))
             for i in range(len(rows) - 1)]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("b", [2, 5])
def test_benchmark_loss_matches_a_direct_computation(b):
    g = torch.Generator().manual_seed(b)
    s, t = torch.randn(b, 7, generator=g, dtype=torch.float64), torch.randn(b, 7, generator=g)
    assert cc_benchmark_loss(s, t).item() == pytest.approx(ref_cc_benchmark(s, t), rel=1e-9)
    with pytest.raises(UserError, match="feat_dim"):
        cc_benchmark_loss(s, torch.randn(b, 6))


def test_both_formulations_through_the_method(tiny_pair):
    teacher, student = tiny_pair
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    bench = build_distiller("cc", {"cc_weight": 3.0}, student, teacher)
    _, losses = bench(x, y)
    with torch.no_grad():
        es, et = student.features(x).embedding, teacher.features(x).embedding
        want = 3.0 * ref_cc_benchmark(bench.projection(es), bench.teacher_projection(et))
    assert losses["cc"].item() == pytest.approx(want, rel=1e-5)
    losses["cc"].backward()  # both embeddings are trained (the benchmark's embed_s, embed_t)
    assert bench.projection.weight.grad is not None
    assert bench.teacher_projection.weight.grad is not None
    assert bench.projection.out_features == bench.teacher_projection.out_features == 128

    paper = build_distiller("cc", {"formulation": "paper", "cc_weight": 2.0}, student, teacher)
    _, losses = paper(x, y)
    with torch.no_grad():
        want = 2.0 * cc_loss(paper.projection(es), et)
    torch.testing.assert_close(losses["cc"], want)
    with pytest.raises(UserError, match="formulation"):
        build_distiller("cc", {"formulation": "crd"}, student, teacher)
