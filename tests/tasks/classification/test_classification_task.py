"""The classification task (tasks/classification/task.py): cross-entropy on the logits, the
training top-1 counts, example targets, and top-1 / top-5 / loss over a loader against a
hand count."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.errors import UserError
from kdlab.tasks import build_task
from kdlab.tasks.classification.task import Classification, classifier_metrics

CPU = torch.device("cpu")


class FixedLogits(nn.Module):
    """A 'network' that returns row ``index`` of a fixed table for image ``index``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(logits.clone(), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0, 0, 0].long()]


def _loader(n: int, batch: int):
    """Images that carry their own index; the labels are ``index % 3``."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    labels = torch.arange(n) % 3
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, n, batch)]


def test_the_task_is_registered_with_top1_and_no_ignored_label():
    task = build_task("classification")
    assert isinstance(task, Classification) and task.primary == "top1"
    assert task.train_score_name == "top1" and task.ignore_index is None
    with pytest.raises(UserError, match="Unknown task_options window"):
        build_task("classification", options={"window": 3})


def test_the_loss_is_cross_entropy_on_the_logits():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = build_task("classification").loss(SimpleNamespace(logits=logits), labels)
    torch.testing.assert_close(loss, -logits.log_softmax(1)[torch.arange(6), labels].mean())


def test_train_counts_are_hits_and_total_in_float64():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]], requires_grad=True)
    counts = build_task("classification").train_counts(logits, torch.tensor([0, 0, 0]))
    assert counts.dtype == torch.float64 and counts.tolist() == [2.0, 3.0]
    assert counts.grad_fn is None


def test_example_targets_are_class_indices_from_the_generator():
    task = build_task("classification")
    draw = lambda: task.example_targets(  # noqa: E731
        64, 7, (8, 8), torch.Generator().manual_seed(3), "cpu")
    a = draw()
    assert a.shape == (64,) and a.dtype == torch.int64
    assert a.min() >= 0 and a.max() < 7 and len(a.unique()) > 1
    assert torch.equal(a, draw())


@pytest.mark.parametrize("classes", [3, 8])
def test_metrics_match_a_hand_count(classes):
    """top-5 is top-k with k = min(5, classes) (every image is a hit with three classes)."""
    n = 10
    logits = torch.randn(n, classes, generator=torch.Generator().manual_seed(classes))
    labels = torch.arange(n) % 3
    net = FixedLogits(logits).train()
    got = classifier_metrics(net, _loader(n, batch=4), device=CPU)
    assert net.training  # restored after evaluating in eval mode
    top = logits.topk(min(5, classes), dim=1).indices
    assert got["images"] == n
    assert got["top1"] == pytest.approx(100.0 * (top[:, 0] == labels).float().mean().item())
    assert got["top5"] == pytest.approx(
        100.0 * (top == labels[:, None]).any(1).float().mean().item())
    assert got["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    if classes == 3:
        assert got["top5"] == 100.0
    metrics = build_task("classification").evaluate(net, _loader(n, batch=3), device=CPU)
    assert metrics == pytest.approx({k: float(v) for k, v in got.items()})


def test_metrics_restore_eval_mode_too_and_count_an_empty_loader_as_no_images():
    net = FixedLogits(torch.zeros(2, 3)).eval()
    got = classifier_metrics(net, [], device=CPU)
    assert not net.training
    assert got == {"top1": 0.0, "top5": 0.0, "loss": 0.0, "images": 0}
