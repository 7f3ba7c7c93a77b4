"""What the FCFD-for-detection trajectory (step-exact) fixture runs on, shared by the generator
(``fcfd_detection_trajectory.py``) and the CI test
(``tests/methods/test_parity_trajectory_fcfd_detection.py``).

One case: FCFD for detection with the settings of its COCO recipe
(``recipes/coco/fcfd/fasterrcnn_resnet18_fpn_from_fasterrcnn_resnet101_fpn.yaml``: method,
optimiser with Detectron2's weight decay 0 on norm layers, multistep schedule over 180k
iterations with the 1000-iteration linear warm-up), unchanged, on kdlab's tiny detector pair
instead of the recipe's ResNet-101 / ResNet-18 Faster R-CNNs:

- networks: ``frcnn_tiny_r18`` -> ``frcnn_tiny_r10_slim`` (3 classes, 1 x 64 x 64 scenes,
  both with 64-wide FPNs; the ROI heads pool level ``"0"``), float64, the teacher in eval
  mode (the analogue of the authors' FrozenBatchNorm teachers); AMP off (float64);
- data: per step a fixed batch of 2 scenes, each 1-3 rectangles whose class is their
  brightness, on noise;
- forced draws: the detector's only random draws are the RPN's and the ROI head's
  positive / negative samplers (``torch.randperm``); the global generator is seeded with
  ``SEEDS["draws"] + step`` before each step, on both sides, which run the same detector
  modules in the same order (backbone, RPN, ROI sampling), so they draw the same samples
  and the student's ROI head samples the same proposals.

kdlab's side is its own training step: recipe -> ``build_distiller`` -> ``Optimisation.build``
(with the norm parameters, as the trainer) -> ``train_step``, one epoch (``set_epoch(0)``,
``train()``), ``STEPS`` steps. The digest of every tensor of the distiller's state_dict (each
once) is ``trajectory_setup.digest``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import parity_setup as P
import torch
import trajectory_setup as TS
from torch import Tensor

from kdlab.core.config import RunConfig, load_config
from kdlab.methods import build_distiller
from kdlab.methods.base import Distiller
from kdlab.models import build_model
from kdlab.tasks import build_task

FIXTURES = P.FIXTURES / "trajectory_detection"
RECIPE = (P.ROOT / "recipes" / "coco" / "fcfd"
          / "fasterrcnn_resnet18_fpn_from_fasterrcnn_resnet101_fpn.yaml")
NETWORKS = ("frcnn_tiny_r18", "frcnn_tiny_r10_slim")
NAME = f"fcfd__{NETWORKS[1]}_from_{NETWORKS[0]}"
CLASSES, CHANNELS, SIZE, BATCH, STEPS = 3, 1, 64, 2, 3
SEEDS = {"teacher": 41, "student": 42, "extras": 43, "batch": 44, "draws": 45}
#: the authors' loss names (their rcnn.py and the detector's) -> kdlab's terms; the
#: detector's own losses (kdlab's torchvision modules on both sides) make kdlab's ``ce``
TERMS = {"loss_app": "app", "loss_roikd_s": "kd", "loss_roil2_s": "kd_l2",
         "loss_roikd_st": "func_kl", "loss_roil2_st": "func_l2",
         "loss_roikd_ts": "funcp_kl", "loss_roil2_ts": "funcp_l2",
         "loss_classifier+loss_box_reg+loss_objectness+loss_rpn_box_reg": "ce"}


def recipe() -> RunConfig:
    return load_config(RECIPE)


def step_batch(step: int) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Images (float64) and box targets of step ``step``."""
    g = torch.Generator().manual_seed(SEEDS["batch"] + step)
    images = 0.1 * torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=g, dtype=torch.float64)
    targets = []
    for b in range(BATCH):
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


def networks() -> tuple[Any, Any]:
    """(teacher, student), seeded, float64."""
    nets = []
    for name, seed in zip(NETWORKS, (SEEDS["teacher"], SEEDS["student"]), strict=True):
        torch.manual_seed(seed)
        nets.append(build_model(name, num_classes=CLASSES, in_channels=CHANNELS,
                                input_size=SIZE).double())
    return nets[0].eval(), nets[1]


def build(teacher: Any, student: Any) -> Distiller:
    """kdlab's FCFD distiller from the recipe, float64, train mode."""
    cfg = recipe()
    task = build_task(cfg.task, num_classes=CLASSES, options=cfg.task_options)
    torch.manual_seed(SEEDS["extras"])
    d = build_distiller(cfg.method_name, cfg.method_options, student, teacher, task=task)
    return d.double().train()


def run(d: Distiller | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """kdlab's trajectory: per step the learning rate, the weighted terms and the digest of
    the distiller's state (the step's random draws seeded by ``SEEDS["draws"] + step``)."""
    if d is None:
        d = build(*networks())

    def seeded(i: int, _optim: Any) -> dict[str, Any]:
        torch.manual_seed(SEEDS["draws"] + i)
        return {}

    return TS.one_epoch(d, recipe(), STEPS, step_batch, seeded, on_step)
