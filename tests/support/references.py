"""Slow, direct reference computations shared by the loss tests (loops, plain floats)."""

from __future__ import annotations

import math

import torch


def ref_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over all elements of the squared difference, element by element."""
    a, b = a.detach().flatten().tolist(), b.detach().flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / len(a)


def ref_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> float:
    """tau^2 * batch mean of sum_c p_t log(p_t / p_s) at temperature tau (FCFD Sec. 2.1)."""
    total = 0.0
    for zs, zt in zip(student_logits.tolist(), teacher_logits.tolist(), strict=True):
        es = [math.exp(v / tau) for v in zs]
        et = [math.exp(v / tau) for v in zt]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        total += sum(t * math.log(t / s) for t, s in zip(pt, ps, strict=True))
    return tau * tau * total / len(student_logits)


def ref_softmax(values: list[float], tau: float) -> list[float]:
    """Softmax of ``values`` at temperature ``tau``, element by element."""
    e = [math.exp(v / tau) for v in values]
    return [v / sum(e) for v in e]


def ref_kl_of(p: list[float], q: list[float]) -> float:
    """KL(p || q) of two distributions given as lists."""
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
