"""SimKD (Chen et al., CVPR 2022): the exported student (projector + the teacher's frozen
classifier) gives the evaluated logits; its extra inference cost."""

from __future__ import annotations

import torch

from kdlab.methods import build_distiller


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, y, torch.arange(b)


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
