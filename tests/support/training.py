"""Test-only model and methods for the training tests (registered only inside a context)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.core.config import RunConfig, build_dataclass
from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Distiller
from kdlab.models import MODELS
from kdlab.models.staged.view import Staged

MODEL, CE, KD, ADV = "_engine_tiny", "_engine_ce", "_engine_kd", "_engine_adv"


def engine_tiny(*, num_classes: int, in_channels: int = 3, input_size: int = 16,
                width: int = 8) -> Staged:
    """3 conv-BN-ReLU stages (the last two halve the size), pool, linear."""
    body = nn.Sequential()
    c = in_channels
    for i, w in enumerate((width, 2 * width, 2 * width)):
        body.add_module(f"s{i}", nn.Sequential(
            nn.Conv2d(c, w, 3, 1 if i == 0 else 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()))
        c = w
    net = nn.Sequential()
    net.add_module("body", body)
    net.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    net.add_module("fc", nn.Linear(c, num_classes))
    return Staged(net, stem=[], stages=[[f"body.s{i}"] for i in range(3)], classifier=["fc"],
                  input_shape=(in_channels, input_size, input_size), num_classes=num_classes)


class EngineCE(Distiller):
    """Cross-entropy with an optional, deliberately broken epoch (for the NaN test)."""

    @dataclass
    class Config:
        weight: float = setting(1.0, range=">= 0")
        # the loss becomes NaN from this epoch (0-based)
        nan_from_epoch: int | None = setting(None, range=">= 0")

    needs_teacher = False

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        self.epoch = epoch

    def forward(self, images, targets, index=None):  # noqa: ANN001
        logits = self.student(images)
        ce = self.cfg.weight * F.cross_entropy(logits, targets)
        losses = {"ce": ce, "l2": 1e-4 * logits.pow(2).mean()}
        if self.cfg.nan_from_epoch is not None and self.epoch >= self.cfg.nan_from_epoch:
            losses["l2"] = losses["l2"] * float("nan")
        return logits, losses


class EngineKD(Distiller):
    """CE + Hinton KD against the frozen teacher (tests teacher loading)."""

    @dataclass
    class Config:
        temperature: float = setting(4.0, range="> 0")

    teacher_reads = "logits"

    def losses(self, batch, student, teacher):  # noqa: ANN001, ANN201
        tau = self.cfg.temperature
        kd = F.kl_div(F.log_softmax(student.logits / tau, 1), F.softmax(teacher.logits / tau, 1),
                      reduction="batchmean") * tau**2
        return {"kd": kd}


class EngineAdversary(Distiller):
    """CE plus a critic on the logits stepped by its own Adam (``separate_optimizers``): the
    critic term sees detached logits (it trains the critic only), the student term evaluates
    the critic with detached weights (it trains the student only)."""

    @dataclass
    class Config:
        critic_lr: float = setting(1e-3, range="> 0")

    needs_teacher = False

    def setup(self) -> None:
        self.critic = nn.Linear(self.student.num_classes, 1)

    def separate_optimizers(self):  # noqa: ANN201
        def adam(params):  # noqa: ANN001, ANN202
            return torch.optim.Adam(params, lr=self.cfg.critic_lr)

        return {"critic": (list(self.critic.parameters()), adam)}

    def forward(self, images, targets, index=None):  # noqa: ANN001
        logits = self.student(images)
        frozen = {k: v.detach() for k, v in self.critic.named_parameters()}
        fool = -torch.func.functional_call(self.critic, frozen, (logits,)).mean()
        critic = self.critic(logits.detach()).mean()
        return logits, {"ce": F.cross_entropy(logits, targets), "fool": 0.01 * fool,
                        "critic": critic}


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """Register the test model and methods, and remove them afterwards."""
    entries = ((MODELS, MODEL, engine_tiny), (METHODS, CE, EngineCE), (METHODS, KD, EngineKD),
               (METHODS, ADV, EngineAdversary))
    added = []
    try:
        for reg, name, obj in entries:
            if name not in reg:
                reg.register(name)(obj)
                added.append((reg, name))
        yield
    finally:
        for reg, name in added:
            del reg._entries[name]


def tiny_config(out_dir: Any, **sections: dict[str, Any]) -> RunConfig:
    """A run of a few small steps on the synthetic data; ``sections`` update the defaults."""
    tree: dict[str, Any] = {
        "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64,
                 "train_subset": 128, "val_subset": 64},
        "model": {"student": MODEL},
        "method": {"name": CE},
        "optim": {"lr": 0.1},
        "schedule": {"name": "multistep", "epochs": 2, "milestones": [1], "gamma": 0.1},
        "train": {"device": "cpu", "out_dir": str(out_dir), "progress": "none"},
    }
    for key, values in sections.items():
        tree[key] = {**tree.get(key, {}), **values} if key != "method" else values
    return build_dataclass(RunConfig, tree, where="config")


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
