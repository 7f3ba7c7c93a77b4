"""What the CIRKD trajectory (step-exact) fixtures run on, shared by the generator
(``cirkd_trajectory.py``) and the CI test (``tests/methods/test_parity_trajectory_cirkd.py``).

Two cases, one per CIRKD row kdlab reproduces (winycg/CIRKD @ 48eb81b, README "SKD [3]" 75.42
and "CWD [5]" 75.55): SKD as CIRKD ran it and CWD as CIRKD ran it (CWD on logits and features
+ pixel KD + the hinge critic). Each runs the method, task options, optimiser and schedule of
its Cityscapes recipe (``recipes/cityscapes/<method>/deeplabv3_resnet18_cirkd_from_
deeplabv3_resnet101_cirkd.yaml``), unchanged, on kdlab's CPU segmentation pair instead of the
recipe's DeepLabV3s:

- networks: ``seg_resnet20`` -> ``seg_resnet8`` (19 classes, auxiliary heads on, as CIRKD's
  ResNet students), 3 x 256 x 256 inputs, so that the score maps are 64 x 64 and CIRKD's
  critic has its four strided convolutions; their feature widths are 64 and 32, the ratio of
  DeepLabV3-R101's 256 to -R18's 128, so the CWD recipe's feature weight (CIRKD's 50 in kdlab's
  normalisation) holds here too;
- forced draws: dropout off (p = 0); everything else in a step is deterministic;
- the teacher's BatchNorm statistics measured on random images (eval mode, as CIRKD's teacher);
  the critic's attention gammas start at 0.1 (0 at construction would leave the attention
  branch out of the trajectory);
- data: per step a fixed batch of 2 images (N(0, 1), float64) and labels, 1/16 of the pixels
  ignored (255 for kdlab, CIRKD's -1 for CIRKD).

kdlab's side is its own training step: recipe -> ``build_distiller`` -> ``Optimisation.build``
(with the norm parameters, as the trainer) -> ``train_step``, one epoch (``set_epoch(0)``,
``train()``), ``STEPS`` steps. The digest of every tensor of the distiller's state_dict (each
once: ``trajectory_setup.unique_state``) is ``trajectory_setup.digest``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import parity_setup as P
import torch
import trajectory_setup as TS
from torch import Tensor, nn

from kdlab.core.config import RunConfig, load_config
from kdlab.methods import build_distiller
from kdlab.methods.base import Distiller
from kdlab.models import build_model
from kdlab.tasks import build_task

FIXTURES = P.FIXTURES / "trajectory_cirkd"
NETWORKS = ("seg_resnet20", "seg_resnet8")
NUM_CLASSES = 19
IMAGE = 256
BATCH = 2
STEPS = 3
IGNORE = 255
SEEDS = {"teacher": 31, "student": 32, "extras": 33, "calibration": 34, "batch": 35}
GAMMA = 0.1


@dataclass(frozen=True)
class Case:
    """``method`` as CIRKD ran it: the recipe ``recipes/cityscapes/<method>/<RECIPE>.yaml``,
    and CIRKD's training script (``train_scripts/train_kd/<script>``) whose flags the
    reference runs with. ``terms``: CIRKD's loss variable (``train_kd.py:313-376``) ->
    kdlab's term."""

    method: str
    script: str
    terms: dict[str, str]

    @property
    def name(self) -> str:
        return f"{self.method}__{NETWORKS[1]}_from_{NETWORKS[0]}"

    @property
    def recipe_path(self) -> Path:
        return (P.ROOT / "recipes" / "cityscapes" / self.method
                / "deeplabv3_resnet18_cirkd_from_deeplabv3_resnet101_cirkd.yaml")


CASES = {c.name: c for c in [
    Case("skd", "train_skd.sh", {"task_loss": "ce", "kd_loss": "pixel", "skd_loss": "pair",
                                 "adv_G_loss": "holistic", "adv_D_loss": "critic"}),
    Case("cwd", "train_cwd.sh", {"task_loss": "ce", "kd_loss": "kd",
                                 "cwd_fea_loss": "cwd_feature",
                                 "cwd_logit_loss": "cwd_logits", "adv_G_loss": "holistic",
                                 "adv_D_loss": "critic"}),
]}
#: CIRKD's terms that its critic's optimiser steps (the rest is the student's ``losses``)
CRITIC_TERMS = ("adv_D_loss",)


def recipe(case: Case) -> RunConfig:
    return load_config(case.recipe_path)


# --------------------------------------------------------------------- inputs
def step_batch(step: int) -> tuple[Tensor, Tensor]:
    """Images (float64) and labels of step ``step``; ignored pixels are ``IGNORE``."""
    g = torch.Generator().manual_seed(SEEDS["batch"] + step)
    x = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (BATCH, IMAGE, IMAGE), generator=g)
    y[torch.rand(y.shape, generator=g) < 1 / 16] = IGNORE
    return x, y


def networks() -> tuple[Any, Any]:
    """(teacher, student): seeded, auxiliary heads on, dropout off, the teacher's BatchNorm
    statistics measured; float32 (:func:`build` makes the distiller float64: SKD's critic is
    sized by a float32 pass of the teacher)."""
    nets = []
    for name, seed in zip(NETWORKS, (SEEDS["teacher"], SEEDS["student"]), strict=True):
        torch.manual_seed(seed)
        net = build_model(name, num_classes=NUM_CLASSES, in_channels=3, input_size=IMAGE,
                          options={"aux": True})
        for m in net.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        nets.append(net)
    teacher, student = nets
    return calibrated(teacher).eval(), student


@torch.no_grad()
def calibrated(net: Any, batches: int = 2, size: int = 2) -> Any:
    """``net`` with every BatchNorm's running statistics the average over ``batches``
    random batches (as ``trajectory_setup.calibrated``, smaller), measured in float64 and
    stored as float32: a float32 pass sums in an order that depends on the number of threads
    (1 and 2 threads differ by 4e-7 in the critic's loss), float64's differences round away."""
    g = torch.Generator().manual_seed(SEEDS["calibration"])
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net.double().train()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    for _ in range(batches):
        net(torch.randn(size, 3, IMAGE, IMAGE, generator=g, dtype=torch.float64))
    for bn in bns:
        bn.momentum = 0.1
    return net.float()


def critic_of(d: Distiller) -> nn.Sequential:
    return d.critic if hasattr(d, "critic") else d.parts["skd"].critic


def projection_of(d: Distiller) -> nn.Module | None:
    parts = getattr(d, "parts", {})
    return parts["cwd"].projection if "cwd" in parts else None


def build(case: Case, teacher: Any, student: Any) -> Distiller:
    """The case's kdlab distiller from its recipe, float64, train mode, the critic's
    attention gammas at ``GAMMA``."""
    cfg = recipe(case)
    task = build_task(cfg.task, ignore_index=IGNORE, num_classes=NUM_CLASSES,
                      options=cfg.task_options)
    torch.manual_seed(SEEDS["extras"])
    d = build_distiller(cfg.method_name, cfg.method_options, student, teacher, task=task)
    d = d.double().train()
    with torch.no_grad():
        for m in critic_of(d).modules():
            if hasattr(m, "gamma"):
                m.gamma.fill_(GAMMA)
    return d


# --------------------------------------------------------------------- kdlab's side
def run(case: Case, d: Distiller | None = None,
        on_step: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """kdlab's trajectory: per step the learning rates (run and critic), the weighted terms
    and the digest of the distiller's state."""
    if d is None:
        d = build(case, *networks())

    def critic_lr(_i: int, optim: Any) -> dict[str, float]:
        (critic_optim,) = optim.separate.values()
        return {"critic_lr": critic_optim.param_groups[0]["lr"]}

    return TS.one_epoch(d, recipe(case), STEPS, step_batch, critic_lr, on_step)
