"""IRG: the defaults follow the Knowledge-Distillation-Zoo re-implementation (one-to-one
edges averaged); the paper's one-to-many mode and summed edges are named settings."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.shared import relations as R


def test_default_edges_pair_same_layers_and_average(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("irg", {}, student, teacher)
    x, y = torch.randn(5, 3, 16, 16), torch.randint(0, 10, (5,))
    _, losses = d(x, y)
    with torch.no_grad():
        s, t = student.features(x), teacher.features(x)
        edges = [R.irg_edge_loss(s.embedding, t.embedding),
                 R.irg_edge_loss(s.stages[-2], t.stages[-2]),
                 R.irg_edge_loss(s.stages[-1], t.stages[-1])]
        tran = R.irg_transformation_loss((s.stages[-2], s.stages[-1]),
                                         (t.stages[-2], t.stages[-1]))
    torch.testing.assert_close(losses["irg_edge"], 5.0 * sum(edges) / 3)
    torch.testing.assert_close(losses["irg_vertex"], 0.1 * R.irg_vertex_loss(s.logits, t.logits))
    torch.testing.assert_close(losses["irg_transform"], 5.0 * tran)

    old = build_distiller("irg", {"one_to_many": True, "edge_reduction": "sum",
                                  "edge_layers": ["logits", "embedding", "stage-1"]},
                          student, teacher)
    _, losses = old(x, y)
    with torch.no_grad():
        want = sum(R.irg_edge_loss(f, t.logits) for f in (s.logits, s.embedding, s.stages[-1]))
    torch.testing.assert_close(losses["irg_edge"], 5.0 * want)
    with pytest.raises(UserError, match="edge_reduction"):
        build_distiller("irg", {"edge_reduction": "max"}, student, teacher)
