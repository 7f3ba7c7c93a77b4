"""Tiny detectors and synthetic box scenes for the detection tests (64x64, one channel)."""

from __future__ import annotations

import pytest
import torch

from kdlab.models import build_model
from kdlab.tasks.detection.models import Detector

SIZE, CLASSES = 64, 3


def scenes(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Images with 1-3 bright rectangles each (class = brightness level) and their boxes."""
    g = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(batch, 1, SIZE, SIZE, generator=g)
    targets = []
    for b in range(batch):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            w, h = (int(v) for v in torch.randint(10, 28, (2,), generator=g))
            x, y = (int(v) for v in torch.randint(0, SIZE - 28, (2,), generator=g))
            c = int(torch.randint(1, CLASSES + 1, (1,), generator=g))
            images[b, 0, y:y + h, x:x + w] += float(c)
            boxes.append([x, y, x + w, y + h])
            labels.append(c)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
    return images, targets


def tiny(name: str = "frcnn_tiny_r10", seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    return build_model(name, num_classes=CLASSES, in_channels=1, input_size=SIZE)


def tiny_pair(student: str = "frcnn_tiny_r10_slim") -> tuple[Detector, Detector]:
    """(teacher, student): frcnn_tiny_r18 and a smaller detector."""
    return tiny("frcnn_tiny_r18", seed=1), tiny(student, seed=2)


def error_report(errors: dict[str, float]):
    """A module-scoped autouse fixture that prints ``errors`` (the largest relative difference
    per compared value, filled by the module's tests) at the end of the module (``pytest -s``).
    A parity module binds it to a name: ``report_errors = error_report(ERRORS)``."""

    @pytest.fixture(scope="module", autouse=True)
    def report_errors():
        yield
        for what, err in errors.items():
            print(f"{what}: {err:.2e}")

    return report_errors
