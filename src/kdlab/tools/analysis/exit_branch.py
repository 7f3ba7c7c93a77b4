"""Exit branches on a frozen teacher (FCFD, Liu et al., ICLR 2023, Sec. 3.4 and App. A.2).

An exit branch reads the frozen teacher's feature at position ``k`` (the output of stage
``k``, 1-based) and is trained with cross-entropy to classify from it. In the paper it has the
structure of a *stronger* network's later part (ResNet50x4's modules after position ``k`` for
a ResNet32x4 teacher) so that it exploits all the task information in the teacher's feature;
it is trained like the networks (SGD, momentum 0.9, weight decay 5e-4, learning rate 0.05,
divided by 10 at 150, 180 and 210 of 240 epochs, batch 64) with the teacher frozen.

Here the branch is stages ``k+1..N`` and the head of a freshly initialised registered model
(``branch_model``, by default the teacher's own architecture; a wider or deeper one of the same
stage layout makes it stronger, as in the paper), preceded by a
:class:`~kdlab.methods.shared.bridge.Bridge` adapter when that model's stage-``k`` feature is
shaped differently from the teacher's. The schedule's milestones keep the paper's fractions of
the epochs. Trained branches are cached in the teacher's run folder
(``analysis/exit_branches/``), keyed by the teacher checkpoint's contents and the settings, so
a second probe does not retrain them.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.config import OptimConfig, ScheduleConfig
from kdlab.errors import UserError
from kdlab.methods.shared.bridge import Bridge
from kdlab.models.staged.view import Staged
from kdlab.training.checkpoint import load_checkpoint, save_checkpoint
from kdlab.training.metrics_log import Progress
from kdlab.training.optimisation import build_optimizer, build_scheduler

#: the paper's branch training (App. A.2, as App. A.1): SGD, LR 0.05, x0.1 at 150/180/210 of 240
PAPER_EPOCHS = 240
PAPER_MILESTONES = (150, 180, 210)
OPTIM = OptimConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)

FeatureFn = Callable[[Tensor], Tensor]  # images -> the feature an exit branch reads


def stage_feature(net: Staged, images: Tensor, position: int) -> Tensor:
    """The output of stage ``position`` (1-based) of ``net``; the later stages are not run."""
    x = net.stem_forward(images)
    for i in range(position):
        x = net.stage_forward(i, x)
    return x


def check_position(net: Staged, position: int) -> None:
    """An exit branch needs a stage after ``position``: 1-based, in ``1..N-1``."""
    n = net.num_stages
    if not 1 <= position <= n - 1:
        raise UserError(f"Position {position} is out of range: exit branches go after stages "
                        f"1..{n - 1} of this {n}-stage teacher (FCFD's 1-based numbering, the "
                        "paper uses 2 and 3); pick them with --positions.")


class ExitBranch(nn.Module):
    """``adapter`` (or nothing), then stages ``position+1..N`` and the head of ``net``.

    ``net`` is a whole staged network whose earlier stages are not used (and not trained):
    keeping it whole lets :meth:`Staged.run_from` run the later part unchanged.
    """

    def __init__(self, net: Staged, position: int, adapter: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.position = position
        self.adapter = adapter if adapter is not None else nn.Identity()

    def forward(self, feature: Tensor) -> Tensor:
        return self.net.run_from(self.position - 1, self.adapter(feature)).logits

    def trained_modules(self) -> nn.ModuleList:
        """The modules the branch runs: the adapter, the later stages and the head."""
        n = self.net.num_stages
        later = [self.net.stage_modules(i) for i in range(self.position, n)]
        return nn.ModuleList([self.adapter, *later, self.net.head_modules()])


def build_exit_branch(teacher: Staged, position: int, branch_model: str, info: Any,
                      *, seed: int = 0) -> ExitBranch:
    """A fresh exit branch after the teacher's stage ``position`` (1-based), from
    ``branch_model``'s later stages; ``info`` gives the data shape (num_classes, in_channels,
    input_size). The branch model must cut into as many stages as the teacher."""
    from kdlab.models import build_model

    check_position(teacher, position)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(branch_model, num_classes=info.num_classes,
                          in_channels=info.in_channels, input_size=info.input_size)
        if net.num_stages != teacher.num_stages:
            raise UserError(f"The exit-branch model {branch_model!r} has {net.num_stages} stages "
                            f"and the teacher {teacher.num_stages}; pick a --branch-model of the "
                            "teacher's stage layout.")
        src, dst = teacher.stage_info[position - 1], net.stage_info[position - 1]
        adapter = None if src.shape == dst.shape else Bridge(
            src, dst, where=f"teacher stage {position} -> exit branch {branch_model!r}")
    return ExitBranch(net, position, adapter)


def milestones(epochs: int) -> list[int]:
    """The paper's LR milestones (150/180/210 of 240 epochs) scaled to ``epochs``."""
    ms = sorted({round(m * epochs / PAPER_EPOCHS) for m in PAPER_MILESTONES})
    return [m for m in ms if 0 < m < epochs]


def train_exit_branch(branch: ExitBranch, features: FeatureFn, loader: Any, *, epochs: int,
                      device: torch.device, progress: str = "auto",
                      label: str = "exit branch") -> None:
    """Train ``branch`` with cross-entropy on ``features(images)`` (the frozen teacher's,
    computed without gradient) for ``epochs`` epochs of ``loader`` (App. A.2's optimiser and
    schedule); progress per step as a bar or lines, one line per epoch."""
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}.")
    params = [p for p in branch.trained_modules().parameters() if p.requires_grad]
    opt = build_optimizer(OPTIM, params)
    sched = build_scheduler(ScheduleConfig(name="multistep", epochs=epochs,
                                           milestones=milestones(epochs)), opt)
    shown = Progress(progress, enabled=True)
    branch.train()
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        total, seen = 0.0, 0
        for batch in shown.steps(loader, len(loader), epoch, epochs):
            images, targets = batch[0].to(device), batch[1].to(device)
            with torch.no_grad():
                f = features(images)
            loss = F.cross_entropy(branch(f), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(targets), seen + len(targets)
            shown.update({"loss": loss.item()})
        sched.step()
        shown.epoch_line({"epoch": f"{epoch + 1}/{epochs} ({label})",
                          "loss": total / max(seen, 1)})
    branch.eval()


@torch.no_grad()
def branch_accuracy(branch: nn.Module, features: FeatureFn, loader: Iterable[Any],
                    device: torch.device) -> float:
    """Top-1 (%) of ``branch`` on ``features(images)`` over ``loader`` (eval mode)."""
    branch.eval()
    hits = count = 0
    for batch in loader:
        images, targets = batch[0].to(device), batch[1].to(device)
        hits += int(branch(features(images)).argmax(dim=1).eq(targets).sum())
        count += len(targets)
    if count == 0:
        raise UserError("The validation split is empty; check the teacher run's data config.")
    return 100.0 * hits / count


@torch.no_grad()
def recalibrate(branch: nn.Module, features: FeatureFn, loader: Iterable[Any],
                device: torch.device) -> nn.Module:
    """A copy of ``branch`` whose BatchNorm running statistics are recomputed (cumulative
    average) on ``features(images)`` over ``loader``. App. A.2: the branches' statistics were
    accumulated on teacher features, so they are re-calibrated on the training set before a
    student's features are tested. An epoch loader is rewound to epoch 0 first, so that the
    statistics do not depend on what ran before (a branch just trained or read from the cache,
    the students before this one)."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(0)
    out = copy.deepcopy(branch)
    norms = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over every batch
    out.train()
    for batch in loader:
        out(features(batch[0].to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return out.eval()


# --------------------------------------------------------------------- the cache
def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the teacher checkpoint a cached branch belongs to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_path(folder: Path, position: int, branch_model: str, epochs: int) -> Path:
    safe = branch_model.replace("/", "_")
    return folder / "analysis" / "exit_branches" / f"k{position}-{safe}-e{epochs}.pt"


def load_cached(path: Path, key: dict[str, Any], branch: ExitBranch) -> float | None:
    """The cached branch's accuracy after loading its weights into ``branch``, or None when
    there is no cache for exactly ``key`` (then the branch is trained again)."""
    if not path.is_file():
        return None
    try:
        saved = load_checkpoint(path)
    except UserError:
        return None  # an unreadable cache is rebuilt
    if saved.get("key") != key:
        return None
    try:
        branch.load_state_dict(saved["branch"])
    except (RuntimeError, KeyError, TypeError):  # written for another branch layout: retrain
        return None
    return float(saved["accuracy"])


def save_cached(path: Path, key: dict[str, Any], branch: ExitBranch, accuracy: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in branch.state_dict().items()}
    save_checkpoint(path, {"key": key, "branch": state, "accuracy": accuracy})
