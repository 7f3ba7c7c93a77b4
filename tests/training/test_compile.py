"""``train.compile``: the training graph and the frozen teacher's inference graph are compiled
apart; a graph that fails to compile (forward, or the lazily compiled backward) falls back to
eager execution with one warning line; the compile cost is printed once. Backends here are
cheap test backends (no inductor: compiling with it takes tens of seconds on a CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo import register_backend
from torch._dynamo.backends.common import aot_autograd

from conftest import tiny_staged
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.training.compiling import CompiledModel, backend_of, compile_run
from kdlab.training.trainer import Trainer
from support.training import registered, tiny_config

GRAPHS: list[list[str]] = []  # per compiled graph: the names of its placeholder inputs


@register_backend(name="_kdlab_test_counting")
def _counting(gm, example_inputs):  # noqa: ANN001, ANN202
    GRAPHS.append([n.name for n in gm.graph.nodes if n.op == "placeholder"])
    return gm.forward


@register_backend(name="_kdlab_test_fails")
def _fails(gm, example_inputs):  # noqa: ANN001, ANN202
    raise RuntimeError("this backend always fails")


def _fine(gm, example_inputs):  # noqa: ANN001, ANN202
    return gm.forward


def _bad_backward(gm, example_inputs):  # noqa: ANN001, ANN202
    raise RuntimeError("the backward graph does not compile")


register_backend(aot_autograd(fw_compiler=_fine, bw_compiler=_bad_backward),
                 name="_kdlab_test_fails_backward")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    GRAPHS.clear()
    yield
    torch._dynamo.reset()


def _kd_run(backend: str):
    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1)
    student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
    d = build_distiller("kd", {}, student, teacher)
    d.train()
    messages: list[str] = []
    model = compile_run(d, d, backend, warn=messages.append)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.01)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.arange(8) % 10

    def run(m):  # noqa: ANN001, ANN202
        _, losses = m(x, y)
        total = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return total

    return d, model, run, messages, teacher, student


def test_the_teacher_is_compiled_apart_from_the_training_graph():
    d, model, run, messages, teacher, student = _kd_run("_kdlab_test_counting")
    totals = [float(model.step(run).detach())]
    compiled = len(GRAPHS)
    totals += [float(model.step(run).detach()) for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(totals)))
    assert len(GRAPHS) == compiled  # later steps reuse the graphs
    # the teacher's weights are the inputs of one graph of their own (the training graph
    # breaks at the teacher call); the student's are the inputs of another
    teacher_graphs = [g for g in GRAPHS if any(p.startswith("l_self_stages") for p in g)]
    student_graphs = [g for g in GRAPHS if any("modules_student" in p for p in g)]
    assert len(teacher_graphs) == 1 and len(student_graphs) == 1
    assert not any("student" in p for p in teacher_graphs[0])
    assert student.net.fc.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert len(messages) == 1 and "compiled in" in messages[0]  # the cost, printed once
    assert isinstance(model, CompiledModel) and model.proven and not model.failed


def test_a_failing_graph_falls_back_to_eager_with_one_warning():
    d, model, run, messages, teacher, student = _kd_run("_kdlab_test_fails")
    before = student.net.fc.weight.detach().clone()
    totals = [float(model.step(run).detach()) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(totals)))
    assert not torch.equal(before, student.net.fc.weight)  # it trained
    assert model.failed
    assert len(messages) == 2  # one line for the training graph, one for the teacher's
    assert all("\n" not in m and "failed to compile" in m and "eagerly" in m for m in messages)


def test_a_backward_that_fails_to_compile_reruns_the_first_step_eagerly():
    d, model, run, messages, teacher, student = _kd_run("_kdlab_test_fails_backward")
    total = model.step(run)
    assert torch.isfinite(total) and model.failed
    assert any("training graph failed" in m and "does not compile" in m for m in messages)
    # the step was taken once: the weights are those of one eager step from the same start
    eager, _, eager_run, _, _, eager_student = _kd_run("_kdlab_test_counting")
    eager_run(eager)
    for a, b in zip(student.parameters(), eager_student.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    model.step(run)  # later steps run eagerly without new warnings
    assert len([m for m in messages if "training graph" in m]) == 1


def test_backend_setting():
    assert backend_of(True) == "inductor"
    assert backend_of("aot_eager") == "aot_eager"
    with pytest.raises(UserError, match="not a torch.compile backend"):
        backend_of("no_such_backend")


def test_trainer_compiles_prints_the_cost_once_and_falls_back(tmp_path, capsys):
    one = {"epochs": 1, "milestones": [1]}
    with registered():
        for backend, said in (("_kdlab_test_counting", "compiled in"),
                              ("_kdlab_test_fails", "failed to compile")):
            cfg = tiny_config(tmp_path / backend, schedule=one,
                              train={"max_steps_per_epoch": 3, "compile": backend})
            summary = Trainer(cfg).fit()
            printed = capsys.readouterr().out
            assert printed.count(said) == 1, printed
            assert all(math.isfinite(v) for v in summary["final_losses"].values())
        with pytest.raises(UserError, match="train.compile"):
            Trainer(tiny_config(tmp_path / "x", train={"compile": "nope"})).fit()
