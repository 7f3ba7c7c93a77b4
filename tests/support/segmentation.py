"""Tiny segmentation networks, batches and the segmentation task for the method tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdlab.models.staged.view import Staged
from kdlab.tasks import Task, build_task

NUM_CLASSES = 11
IGNORE = 255


def seg_task() -> Task:
    return build_task("segmentation", ignore_index=IGNORE)


def _identity(x: Tensor) -> Tensor:
    return x


def tiny_seg(widths=(8, 16, 32), head: int = 16, num_classes: int = NUM_CLASSES,
             input_size: int = 32, seed: int = 0) -> Staged:
    """3 conv-BN-ReLU stages (strides 1, 2, 2: output stride 4), a 3x3 decoder conv and a
    1x1 classifier, seen as a segmentation Staged view (pool = identity)."""
    torch.manual_seed(seed)
    body = nn.Sequential()
    c_in = 3
    for i, w in enumerate(widths):
        body.add_module(f"s{i}", nn.Sequential(
            nn.Conv2d(c_in, w, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(w),
            nn.ReLU()))
        c_in = w
    net = nn.Sequential()
    net.add_module("body", body)
    net.add_module("decoder", nn.Sequential(nn.Conv2d(c_in, head, 3, 1, 1, bias=False),
                                            nn.BatchNorm2d(head), nn.ReLU()))
    net.add_module("cls", nn.Conv2d(head, num_classes, 1))
    return Staged(net, stem=[], stages=[[f"body.s{i}"] for i in range(len(widths))],
                  pre_pool=["decoder"], pool=_identity, classifier=["cls"],
                  input_shape=(3, input_size, input_size), num_classes=num_classes)


def tiny_seg_pair(input_size: int = 32) -> tuple[Staged, Staged]:
    """(teacher, student): the teacher twice as wide."""
    teacher = tiny_seg((16, 32, 64), head=32, input_size=input_size, seed=1)
    student = tiny_seg((8, 16, 32), head=16, input_size=input_size, seed=2)
    return teacher, student


def seg_batch(n: int = 4, size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images (n, 3, size, size) and labels (n, size, size) in 0..10 with some 255s."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)
    y[:, :3] = IGNORE
    return x, y
