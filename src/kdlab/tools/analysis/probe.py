"""The exit-branch probe of students' features (FCFD, Liu et al., ICLR 2023, Sec. 3.4, Table 6).

Exit branches trained on the frozen teacher's features (:mod:`kdlab.tools.analysis.exit_branch`)
read a student's feature at the same position after the student's bridge ``B_st`` (the
student -> teacher bridge an FCFD run keeps in its checkpoint), with no further training;
their accuracy says how much of the teacher's task-relevant meaning the student's feature
carries. The branches' BatchNorm statistics are re-calibrated on the training set with each
student's features first (App. A.2).

A FitNet student is fed through its hint regressor at its hint position. A student without a
bridge at a position is fed its raw feature when that is shaped like the
teacher's (e.g. a teacher probed with its own features, or a same-shaped student); otherwise
it has no result there, and the reason is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.models.staged.view import Staged
from kdlab.tools.analysis.exit_branch import (
    ExitBranch,
    FeatureFn,
    branch_accuracy,
    build_exit_branch,
    cache_path,
    load_cached,
    recalibrate,
    save_cached,
    stage_feature,
    train_exit_branch,
)

BRIDGED = "bridge B_st"
REGRESSOR = "hint regressor (FitNet)"
AS_IS = "as is (same shape as the teacher's)"


@dataclass
class BranchSet:
    """The trained exit branches by position, their accuracy on the teacher's own features
    (validation split, %) and whether each came from the cache."""

    branches: dict[int, ExitBranch]
    accuracy: dict[int, float]
    cached: dict[int, bool]


@dataclass
class StudentProbe:
    """One student's probe: accuracy (%) per position (None where it could not be fed) and
    how its feature reached the branch (``BRIDGED``, ``AS_IS`` or why not)."""

    label: str
    method: str
    model: str
    accuracy: dict[int, float | None] = field(default_factory=dict)
    feed: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def teacher_feed(teacher: Staged, position: int) -> FeatureFn:
    """images -> the frozen teacher's feature at ``position`` (1-based)."""
    return lambda images: stage_feature(teacher, images, position)


def find_bridge(distiller: nn.Module, position: int) -> tuple[nn.Module, str] | None:
    """The run's trained student -> teacher map at ``position`` and its name, or None.

    FCFD (and online FCFD) keep ``B_st`` per position in ``b_st``; FitNet keeps its hint
    regressor in ``bridge``, which maps the student's stage ``cfg.position`` to the
    teacher's; a combination (``combo``) is searched part by part.
    """
    bridges = getattr(distiller, "b_st", None)
    if isinstance(bridges, nn.ModuleDict) and str(position) in bridges:
        return bridges[str(position)], BRIDGED
    regressor = getattr(distiller, "bridge", None)
    if isinstance(regressor, nn.Module) and getattr(distiller.cfg, "position", None) == position:
        return regressor, REGRESSOR
    parts = getattr(distiller, "parts", None)
    if isinstance(parts, nn.ModuleDict):
        for part in parts.values():
            found = find_bridge(part, position)
            if found is not None:
                return found
    return None


def student_feed(distiller: nn.Module, teacher: Staged,
                 position: int) -> tuple[FeatureFn | None, str]:
    """``(images -> the student's feature as the branch reads it, how)`` at ``position``.

    The student's own bridge at that position when its run has one (:func:`find_bridge`);
    otherwise the raw feature if it has the teacher's shape; otherwise ``(None, why)``.
    """
    student: Staged = distiller.student
    if position > student.num_stages:
        return None, f"the student has only {student.num_stages} stages"
    found = find_bridge(distiller, position)
    if found is not None:
        bridge, how = found

        def bridged(images: Tensor) -> Tensor:
            return bridge(stage_feature(student, images, position))
        return bridged, how
    s, t = student.stage_info[position - 1].shape, teacher.stage_info[position - 1].shape
    if s != t:
        return None, (f"no bridge at stage {position} and its feature {list(s)} is not shaped "
                      f"like the teacher's {list(t)}")
    return (lambda images: stage_feature(student, images, position)), AS_IS


def exit_branches(teacher: Staged, positions: Sequence[int], *, folder: Path,
                  key: dict[str, Any], info: Any, train: Any, val: Any, epochs: int,
                  branch_model: str, device: torch.device, progress: str = "auto",
                  seed: int = 0) -> BranchSet:
    """The exit branches at ``positions``: from the cache in ``folder`` when its ``key``
    (teacher checkpoint digest, data, settings) matches, else trained on ``train`` and cached.
    Their accuracy on the teacher's features is measured on ``val``."""
    teacher.eval()
    out = BranchSet({}, {}, {})
    for k in positions:
        branch = build_exit_branch(teacher, k, branch_model, info, seed=seed + k).to(device)
        path = cache_path(folder, k, branch_model, epochs)
        full_key = {**key, "position": k, "branch_model": branch_model, "epochs": epochs,
                    "seed": seed}
        acc = load_cached(path, full_key, branch)
        out.cached[k] = acc is not None
        if acc is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                train_exit_branch(branch, teacher_feed(teacher, k), train, epochs=epochs,
                                  device=device, progress=progress,
                                  label=f"exit branch at stage {k}")
            acc = branch_accuracy(branch, teacher_feed(teacher, k), val, device)
            save_cached(path, full_key, branch, acc)
        out.branches[k], out.accuracy[k] = branch.eval(), acc
    return out


def probe_student(label: str, distiller: nn.Module, teacher: Staged, branches: BranchSet, *,
                  train: Any, val: Any, device: torch.device, model: str = "?",
                  method: str = "?", calibrate: bool = True) -> StudentProbe:
    """Feed one student's (bridged) features to every exit branch; with ``calibrate`` the
    branch's BatchNorm statistics are first recomputed on the student's training features."""
    distiller.eval()
    result = StudentProbe(label, method, model)
    for k, branch in branches.branches.items():
        feed, how = student_feed(distiller, teacher, k)
        result.feed[k] = how
        if feed is None:
            result.accuracy[k] = None
            continue
        tested = recalibrate(branch, feed, train, device) if calibrate else branch
        result.accuracy[k] = branch_accuracy(tested, feed, val, device)
    return result
