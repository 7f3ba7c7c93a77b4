"""ReviewKD's faster ABF computes what the authors' formulation computes (values, gradients,
BatchNorm statistics), in either memory layout; one step runs each network once."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import kdlab.methods.reviewkd.abf as abf
from kdlab.methods import build_distiller
from kdlab.methods.base import Batch
from kdlab.methods.reviewkd.abf import ABF
from kdlab.methods.reviewkd.losses import hcl_loss

LAYOUTS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def reference_abf(m: ABF, x, residual=None, out_size=None):
    """The authors' ABF.forward written out: always resize the residual, concatenate, one
    1x1 attention conv, NCHW throughout."""
    x = m.conv1(x)
    if m.att_conv is not None:
        residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
        att = m.att_conv(torch.cat([x, residual], dim=1))
        x = x * att[:, 0:1] + residual * att[:, 1:2]
    if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
        x = F.interpolate(x, size=out_size, mode="nearest")
    return m.conv2(x), x


def reference_review(d, levels):
    results, residual = [None] * len(levels), None
    for i in reversed(range(len(levels))):
        results[i], residual = reference_abf(d.abfs[i], levels[i], residual, d.out_sizes[i])
    return results


def _grads(module, inputs, out):
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(out, [*inputs, *params])


def _random_(m: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm affine parameters and conv biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("case", ["residual same size", "residual smaller", "resize output",
                                  "no fusion"])
def test_abf_matches_the_authors_formulation(layout, dtype, tol, case, monkeypatch):
    monkeypatch.setattr(abf, "preferred_layout", lambda device: LAYOUTS[layout])
    torch.manual_seed(0)
    fuse = case != "no fusion"
    m = ABF(6, 10, 5, fuse=fuse).to(dtype)
    _random_(m, 1)
    ref = copy.deepcopy(m)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, 8, 8, generator=g, dtype=dtype, requires_grad=True)
    res_size = {"residual smaller": 4, "resize output": 3}.get(case, 8)
    r = torch.randn(4, 10, res_size, res_size, generator=g, dtype=dtype, requires_grad=True)
    out_size = (16, 16) if case == "resize output" else (8, 8)
    inputs = [x, r] if fuse else [x]
    out, res = m(x, r if fuse else None, out_size)
    want, want_res = reference_abf(ref, x, r if fuse else None, out_size)
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    torch.testing.assert_close(res, want_res, rtol=tol, atol=tol)
    w = torch.randn(out.shape, generator=g, dtype=dtype)
    w_res = torch.randn(res.shape, generator=g, dtype=dtype)
    got = _grads(m, inputs, (out * w).sum() + (res * w_res).sum())
    exp = _grads(ref, inputs, (want * w).sum() + (want_res * w_res).sum())
    for a, b in zip(got, exp, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(m.buffers(), ref.buffers(), strict=True):  # BatchNorm running statistics
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_abf_keeps_channels_last_on_cpu_and_its_parameters():
    m = ABF(6, 10, 5, fuse=True)
    out, res = m(torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert res.is_contiguous(memory_format=torch.channels_last)
    # checkpoints keep their keys: the attention is still one (2m -> 2) 1x1 conv
    assert m.att_conv[0].weight.shape == (2, 20, 1, 1)
    assert set(m.state_dict()) >= {"att_conv.0.weight", "att_conv.0.bias"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reviewkd_loss_and_gradients_match_the_authors_formulation(tiny_pair, layout,
                                                                    monkeypatch):
    monkeypatch.setattr(abf, "preferred_layout", lambda device: LAYOUTS[layout])
    teacher, student = tiny_pair
    d = build_distiller("reviewkd", {"warmup_epochs": 0}, student, teacher).double()
    _random_(d.abfs, 3)
    d.train()
    ref = copy.deepcopy(d)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    y = torch.arange(8) % 10
    _, losses = d(x, y)
    s, t = ref.student.features(x), ref.teacher_source.features(Batch(x))
    # the authors' levels: the stages after the stem (the tiny nets' stage 0) and the pool
    levels, t_levels = ([*f.stages[1:], f.embedding[:, :, None, None]] for f in (s, t))
    want = hcl_loss(reference_review(ref, levels), t_levels)
    torch.testing.assert_close(losses["review"], want, rtol=1e-10, atol=0)
    got = torch.autograd.grad(losses["review"], list(d.parameters()), allow_unused=True)
    exp = torch.autograd.grad(want, list(ref.parameters()), allow_unused=True)
    assert sum(a is not None for a in got) > len(list(d.abfs.parameters()))  # student's too
    for a, b in zip(got, exp, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_reviewkd_step_runs_each_network_once_and_the_teacher_without_autograd(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("reviewkd", {"warmup_epochs": 0}, student, teacher)
    calls = {"student": 0, "teacher": 0}
    seen_teacher = []
    for name, net in (("student", student), ("teacher", teacher)):
        features = net.features

        def counted(images, name=name, features=features):
            calls[name] += 1
            out = features(images)
            if name == "teacher":
                seen_teacher.append(out)
            return out

        object.__setattr__(net, "features", counted)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    _, losses = d(x, y)
    sum(losses.values()).backward()
    assert calls == {"student": 1, "teacher": 1}
    assert all(f.grad_fn is None and not f.requires_grad for f in seen_teacher[0].stages)
