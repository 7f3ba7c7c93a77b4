"""What kdlab's parity fixtures are computed on, shared by the generator and the CI test.

Everything is derived from seeds (no tensors are stored): the networks are kdlab's CIFAR zoo
built under a seed, their BatchNorm affine parameters and running statistics then drawn from
a second generator (so that eval-mode teachers and OFD's margins are not trivial), the
method's own modules (bridges, regressors, embeddings) built under a third seed, the batch
drawn from a fourth. Everything runs in float64. The reference side receives copies of these
weights (``copy_weights``): kdlab's zoo has RepDistiller's parameter layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from kdlab.methods import build_distiller
from kdlab.methods.base import Batch, Distiller
from kdlab.models import build_model
from kdlab.models.staged.view import Features, Staged

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"
NUM_CLASSES = 100
SEEDS = {"teacher": 11, "student": 12, "extras": 13, "batch": 14, "negatives": 15}
BATCH = 4
#: pair name (the recipes' file name) -> (teacher, student)
PAIRS = {
    "resnet8x4_from_resnet32x4": ("resnet32x4", "resnet8x4"),
    "mobilenetv2_from_vgg13": ("vgg13", "mobilenetv2"),
}
#: CRD with a small memory (the formula does not depend on its size; the fixture stays fast)
CRD_OVERRIDES = {"num_negatives": 16}
CRD_TRAIN_SIZE = 32


def seeded_network(name: str, seed: int) -> Staged:
    """kdlab's ``name`` for CIFAR-100, its weights from ``seed``, in float64."""
    torch.manual_seed(seed)
    net = build_model(name, num_classes=NUM_CLASSES)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    net.double()
    net.stage_info  # noqa: B018 - describe now: it draws a probe batch from the global RNG
    return net


def batch() -> tuple[Tensor, Tensor, Tensor]:
    """Images (float64, 32x32), labels and dataset indices of the fixed batch."""
    g = torch.Generator().manual_seed(SEEDS["batch"])
    x = torch.randn(BATCH, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (BATCH,), generator=g)
    index = torch.randperm(CRD_TRAIN_SIZE, generator=g)[:BATCH]
    return x, y, index


def negatives(index: Tensor, num_data: int, k: int) -> Tensor:
    """CRD's bank rows for the batch (column 0 the positive), drawn from a fixed seed; both
    sides use these rows."""
    g = torch.Generator().manual_seed(SEEDS["negatives"])
    draw = torch.randint(0, num_data - 1, (index.shape[0], k), generator=g)
    draw = draw + (draw >= index.view(-1, 1)).long()
    return torch.cat([index.view(-1, 1), draw], dim=1)


def recipe_options(method: str, pair: str) -> dict[str, Any]:
    """The ``method:`` block of ``recipes/cifar100/<method>/<pair>.yaml`` (without ``name``),
    or ``{}`` (the method's defaults) when there is no such recipe."""
    path = ROOT / "recipes" / "cifar100" / method / f"{pair}.yaml"
    if not path.exists():
        return {}
    block = dict((yaml.safe_load(path.read_text()) or {}).get("method") or {})
    block.pop("name", None)
    return block


def options(method: str, pair: str) -> dict[str, Any]:
    opts = recipe_options(method, pair)
    if method == "crd":
        opts.update(CRD_OVERRIDES)
    return opts


def build(method: str, pair: str, teacher: Staged, student: Staged) -> Distiller:
    """The kdlab distiller of ``method`` with the pair's recipe options, extras from the seed,
    in float64 and train mode (the teacher stays frozen and in eval mode)."""
    torch.manual_seed(SEEDS["extras"])
    d = build_distiller(method, options(method, pair), student, teacher,
                        train_size=CRD_TRAIN_SIZE)
    d.double().train()
    d.set_epoch(239, 240)  # past every warm-up
    if method == "fcfd":  # every candidate path at once (the reference is told the same)
        d.sample_paths = lambda: list(d.candidates)
    return d


def combined(terms: dict[str, float], name: str) -> float:
    """A fixture term ``a+b`` is the sum of kdlab's terms ``a`` and ``b`` (where a reference
    reports one number for what kdlab logs as two)."""
    return sum(terms[part] for part in name.split("+"))


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy ``src``'s parameters and buffers into ``dst`` in registration order; shapes must
    agree one by one (names may differ)."""
    a, b = list(src.state_dict().values()), list(dst.state_dict().values())
    if len(a) != len(b):
        raise ValueError(f"{len(a)} tensors vs {len(b)}")
    with torch.no_grad():
        for x, y in zip(a, b, strict=True):
            if x.shape != y.shape:
                raise ValueError(f"shape {tuple(x.shape)} vs {tuple(y.shape)}")
            y.copy_(x)


def kdlab_terms(method: str, d: Distiller, x: Tensor, y: Tensor, index: Tensor,
                teacher_features: Features | None = None) -> dict[str, float]:
    """kdlab's weighted loss terms of one training step of ``d`` on the fixed batch.

    A method whose passes are the plain ones may be given the teacher's features of the
    batch, computed once (the frozen eval-mode teacher gives the same for every method): the
    terms are then exactly what its forward returns, CE included.
    """
    with _fixed_negatives(method):
        if teacher_features is None or not d.combinable or method in OWN_FORWARD:
            _, losses = d(x, y, index)
        else:
            batch = Batch(x, y, index)
            s = d.student_pass(batch)
            losses = {}
            ce_weight = getattr(d.cfg, "ce_weight", 1.0)
            if ce_weight:
                losses["ce"] = ce_weight * F.cross_entropy(s.logits, y)
            losses.update(d.losses(batch, s, teacher_features))
    return {k: float(v.detach()) for k, v in losses.items()}


#: methods whose forward is not the default one (extra passes, taps or paths)
OWN_FORWARD = {"ofd", "fcfd"}


@contextlib.contextmanager
def _fixed_negatives(method: str) -> Iterator[None]:
    if method != "crd":
        yield
        return
    import kdlab.methods.crd.memory_bank as bank

    original = bank.sample_negatives
    bank.sample_negatives = lambda i, n, k, generator=None: negatives(i, n, k)
    try:
        yield
    finally:
        bank.sample_negatives = original


def cross_entropy(logits: Tensor, y: Tensor) -> float:
    return float(F.cross_entropy(logits, y))
