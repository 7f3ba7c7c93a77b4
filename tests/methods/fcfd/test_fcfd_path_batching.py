"""FCFD's batched paths (``path_batching``) against one pass per path (the reference): the
same losses, parameter gradients and running statistics, in train mode, for both
``teacher_bn`` settings, online FCFD and FCFD+SimKD; and the two building blocks
(:meth:`Staged.run_from_many`, :func:`chunked_batchnorm`) against separate calls."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_staged
from kdlab.methods import build_distiller
from kdlab.nn.chunked_bn import chunked_batchnorm

N_CLS = 10
ALL = [(1, 1), (2, 1), (3, 1), (1, 0), (2, 0), (3, 0)]


def batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)
    return x, torch.randint(0, N_CLS, (n,), generator=g)


def pair(method: str, paths, **opts):
    """(reference: one pass per path, batched) with equal weights and fixed paths."""
    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1)
    student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
    opts = {"l2_warmup_epochs": 0, "positions": [1, 2, 3], "funcp_l2_weight": 0.5, **opts}
    made = []
    for batching in (False, True):
        d = build_distiller(method, {**opts, "path_batching": batching},
                            copy.deepcopy(student), copy.deepcopy(teacher))
        d.train()
        d.double()
        d.sample_paths = lambda: list(paths)
        made.append(d)
    made[1].load_state_dict(made[0].state_dict())
    return made


def buffers(d):
    out = {f"d.{k}": v for k, v in d.named_buffers()}
    if d.teacher is not None:  # the frozen teacher is outside the distiller's buffers
        out.update({f"t.{k}": v for k, v in d.teacher.named_buffers()})
    return out


def assert_same_step(ref, new, steps: int = 2):
    for step in range(steps):
        x, y = batch(seed=step)
        outs = []
        for d in (ref, new):
            d.zero_grad(set_to_none=True)
            logits, losses = d(x, y)
            sum(losses.values()).backward()
            outs.append((logits, losses))
        (l_ref, loss_ref), (l_new, loss_new) = outs
        torch.testing.assert_close(l_new, l_ref, rtol=1e-10, atol=1e-12)
        assert loss_new.keys() == loss_ref.keys()
        for name in loss_ref:
            torch.testing.assert_close(loss_new[name], loss_ref[name], rtol=1e-10, atol=1e-12,
                                       msg=f"loss {name}")
        grads = 0
        for (name, p), q in zip(ref.named_parameters(), new.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                grads += 1
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-9, atol=1e-12,
                                           msg=f"gradient {name}")
        assert grads
        b_ref, b_new = buffers(ref), buffers(new)
        for name, v in b_ref.items():
            torch.testing.assert_close(b_new[name], v, rtol=1e-10, atol=1e-12,
                                       msg=f"buffer {name}")


@pytest.mark.parametrize("teacher_bn", ["eval", "batch"])
@pytest.mark.parametrize("paths", [ALL, [(2, 1), (3, 1)], [(1, 0), (3, 0)],
                                   [(1, 1), (3, 0)]])
def test_batched_paths_equal_one_pass_per_path(teacher_bn, paths):
    ref, new = pair("fcfd", paths, teacher_bn=teacher_bn)
    assert_same_step(ref, new)
    # the batched route really ran: a same-network group is one pass through the last stage
    calls = []
    new.teacher.run_from_many = (lambda f: lambda *a: calls.append(1) or f(*a))(
        new.teacher.run_from_many)
    new.student.run_from_many = (lambda f: lambda *a: calls.append(1) or f(*a))(
        new.student.run_from_many)
    new(*batch())
    groups = sum(len({k for k, d in paths if d == delta}) > 1 for delta in (0, 1))
    assert len(calls) == groups


def test_batched_paths_online_fcfd_and_simkd():
    ref, new = pair("online_fcfd", ALL, teacher_path_grad=True)
    assert_same_step(ref, new)
    ref, new = pair("online_fcfd", ALL)
    assert_same_step(ref, new)
    ref, new = pair("fcfd", ALL, simkd=True, teacher_bn="batch")
    assert_same_step(ref, new)


def test_run_from_many_equals_run_from_per_pass():
    net = tiny_staged(seed=4).double().eval()
    g = torch.Generator().manual_seed(0)
    shapes = [(8, 16, 16), (16, 8, 8), (32, 4, 4), (32, 4, 4)]
    starts = [2, 0, 3, 0]  # out of order, a repeated start, one straight into the head
    feats = [torch.randn(3, *shapes[k], generator=g, dtype=torch.float64) for k in starts]
    runs = net.run_from_many(starts, feats)
    for k, f, run in zip(starts, feats, runs, strict=True):
        one = net.run_from(k, f)
        assert len(run.stages) == len(one.stages)
        for a, b in zip(run.stages, one.stages, strict=True):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(run.logits, one.logits)
        torch.testing.assert_close(run.embedding, one.embedding)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_chunked_batchnorm_equals_one_call_per_chunk(momentum):
    bn = nn.BatchNorm2d(3, momentum=momentum).double()
    copies = [{"running_mean": torch.rand(3, dtype=torch.float64),
               "running_var": torch.rand(3, dtype=torch.float64) + 1,
               "num_batches_tracked": torch.tensor(j + 2)} for j in range(2)]
    ref_bn, ref_copies = copy.deepcopy(bn), copy.deepcopy(copies)
    x = torch.randn(12, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    # chunk 0: its own copy, chunk 1: the layer's own buffers, chunk 2: the second copy
    stats = [{bn: copies[0]}, None, {bn: copies[1]}]
    with chunked_batchnorm([bn], 4, stats):
        y = bn(x)
    assert "forward" not in bn.__dict__  # restored
    parts = []
    for j, part in enumerate(x.split(4)):
        saved = dict(ref_bn._buffers)
        if j != 1:
            ref_bn._buffers.update(ref_copies[j // 2])
        parts.append(ref_bn(part))
        ref_bn._buffers.update(saved)
    ref = torch.cat(parts)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    for name, v in ref_bn.named_buffers():
        torch.testing.assert_close(getattr(bn, name), v)
    for a, b in zip(copies, ref_copies, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name])
    # eval mode with shared statistics: one call, the same as per chunk
    bn.eval()
    with chunked_batchnorm([bn], 4):
        torch.testing.assert_close(bn(x), torch.cat([bn(p) for p in x.split(4)]))
