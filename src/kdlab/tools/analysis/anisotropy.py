"""Function anisotropy of an intermediate feature (FCFD, Liu et al., ICLR 2023, Sec. 1).

The paper's motivating measurement: take a trained network, move the intermediate feature of
every image along many random directions by the same L2 distance, continue the forward pass
and measure how much the output changes (KL divergence between the softmax outputs before and
after). If the later layers treated all directions alike (as the L2 distance that feature
distillation optimises does), every direction would change the output equally; the paper
finds a mean KL between 0.59 and 1.29 across 512 directions on a CIFAR-100 ResNet32x4, and an
accuracy drop of 24.42 % when each image is always moved along its most sensitive direction
against 10.69 % along its least sensitive one.

How the directions are chosen here, following Sec. 1: ``N`` random directions are drawn once
(Gaussian vectors normalised to unit L2 norm over the whole ``C x H x W`` feature) and shared
by every image; each image's feature ``F`` is moved to ``F + d * u`` for every direction
``u``. The most and the least sensitive directions are found per image among these ``N``
candidates (largest and smallest KL), as the paper does; no gradient is used (at ``d = 0`` the
KL and its gradient are zero, so a gradient direction would need a further choice the paper
does not make).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import UserError
from kdlab.models.staged.view import Staged

#: images x directions run through the later stages in one forward pass
PASS_BUDGET = 1024
#: the directions are drawn once and kept for every batch up to this many numbers in all
KEEP_ELEMENTS = 1 << 26
#: the default distance, as a fraction of the mean L2 norm of the stage's features: a move as
#: long as the feature itself. The paper does not give its distance; on a Fashion-MNIST
#: resnet20 a tenth of the norm changed the outputs by KL < 0.01, the whole norm by 0.1 - 0.5
#: (docs/analysis.md).
DEFAULT_RELATIVE_DISTANCE = 1.0


@dataclass
class AnisotropyResult:
    """What :func:`measure_anisotropy` returns (all KL values in nats, accuracies in %).

    ``distance``: the L2 distance of every move; ``relative_distance``: it divided by
    ``feature_norm``, the mean L2 norm of the unmoved features. ``direction_kl``: per
    direction, the mean KL over the images (the values the paper's "ranges from 0.59 to 1.29"
    spans). ``kl_mean``: mean over all images and directions;
    ``kl_min`` / ``kl_max``: the smallest and largest per-direction mean. ``sample_kl_min`` /
    ``sample_kl_max``: each image's least / most sensitive direction's KL, averaged over the
    images. ``accuracy``: top-1 of the unmoved features; ``accuracy_most`` /
    ``accuracy_least``: top-1 when every image moves along its most / least sensitive
    direction; ``drop_most`` / ``drop_least`` the differences to ``accuracy``.
    """

    stage: int
    distance: float
    relative_distance: float
    directions: int
    images: int
    feature_shape: list[int]
    feature_norm: float
    kl_mean: float
    kl_min: float
    kl_max: float
    sample_kl_min: float
    sample_kl_max: float
    accuracy: float
    accuracy_most: float
    accuracy_least: float
    drop_most: float
    drop_least: float
    seed: int
    direction_kl: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kl_per_sample(before: Tensor, after: Tensor) -> Tensor:
    """``KL(softmax(before) || softmax(after))`` per row of two logit tensors (nats).

    FCFD Sec. 1: the change of the final output caused by moving the feature; the unmoved
    output is the reference distribution.
    """
    dtype = torch.promote_types(before.dtype, torch.float32)  # half precision -> float32
    log_p, log_q = F.log_softmax(before.to(dtype), dim=1), F.log_softmax(after.to(dtype), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def random_directions(count: int, shape: tuple[int, ...], *, seed: int, first: int = 0,
                      device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Directions ``first .. first + count - 1`` of the seeded sequence, each ``shape``-shaped
    with unit L2 norm (Gaussian vectors normalised, i.e. uniform on the sphere).

    Direction ``i`` depends only on ``(seed, i)``, so chunks drawn separately agree with one
    draw of all of them and every batch of images sees the same directions.
    """
    out = []
    for i in range(first, first + count):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out.append(torch.randn(shape, generator=g))
    u = torch.stack(out).to(device=device, dtype=dtype)
    return u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))


def check_stage(net: Staged, stage: int) -> None:
    """``stage`` is a 1-based position in ``1..N`` (FCFD's numbering); else a UserError."""
    n = net.num_stages
    if not 1 <= stage <= n:
        raise UserError(f"Stage {stage} is out of range: this network has stages 1..{n} "
                        "(FCFD's 1-based numbering); pick one of them with --stage.")


@torch.no_grad()
def measure_anisotropy(
    net: Staged, batches: Iterable[Any], *, stage: int, distance: float | None = None,
    relative: float = DEFAULT_RELATIVE_DISTANCE, directions: int = 512, seed: int = 0,
    device: torch.device | str = "cpu",
) -> AnisotropyResult:
    """Move stage ``stage``'s feature (1-based) of every image in ``batches`` along
    ``directions`` shared random unit directions by L2 distance ``distance`` and measure the
    output's KL and the accuracy along each image's most / least sensitive direction.

    ``batches`` yields ``(images, targets, ...)``; ``net`` runs in eval mode (its mode is
    restored). ``distance=None``: ``relative`` times the mean feature norm of the first batch
    (recorded in the result).
    """
    check_stage(net, stage)
    if directions < 1:
        raise UserError(f"--directions must be at least 1, got {directions}.")
    if distance is not None and not distance >= 0:
        raise UserError(f"--distance must be a non-negative L2 distance, got {distance}.")
    if not relative >= 0:
        raise UserError(f"--relative-distance must be non-negative, got {relative}.")
    was_training = net.training
    net.eval()
    try:
        return _measure(net, batches, stage, distance, relative, directions, seed,
                        torch.device(device))
    finally:
        net.train(was_training)


def _measure(net: Staged, batches: Iterable[Any], stage: int, distance: float | None,
             relative: float, directions: int, seed: int,
             device: torch.device) -> AnisotropyResult:
    kl_sums = torch.zeros(directions, dtype=torch.float64)
    counts = {"images": 0, "clean": 0, "most": 0, "least": 0}
    sample_min_sum = sample_max_sum = norm_sum = 0.0
    shape: tuple[int, ...] | None = None
    kept: dict[tuple[int, int], Tensor] = {}  # direction chunks, kept while they are small
    for batch in batches:
        images, targets = batch[0].to(device), batch[1].to(device)
        out = net.features(images)
        feature, logits = out.stages[stage - 1], out.logits
        if distance is None:
            distance = relative * feature.flatten(1).norm(dim=1).mean().item()
        shape = tuple(feature.shape[1:])
        kl, correct = _all_directions(net, stage, feature, logits, targets, distance,
                                      directions, seed, kept)
        most, least = kl.argmax(dim=1), kl.argmin(dim=1)
        rows = torch.arange(len(kl), device=kl.device)
        kl_sums += kl.double().sum(dim=0).cpu()
        sample_max_sum += kl[rows, most].double().sum().item()
        sample_min_sum += kl[rows, least].double().sum().item()
        norm_sum += feature.flatten(1).norm(dim=1).double().sum().item()
        counts["images"] += len(targets)
        counts["clean"] += int(logits.argmax(dim=1).eq(targets).sum())
        counts["most"] += int(correct[rows, most].sum())
        counts["least"] += int(correct[rows, least].sum())
    n = counts["images"]
    if n == 0 or shape is None or distance is None:
        raise UserError("The analysis saw no images; check the data split and --batches.")
    per_direction = (kl_sums / n).tolist()
    acc = {k: 100.0 * counts[k] / n for k in ("clean", "most", "least")}
    return AnisotropyResult(
        stage=stage, distance=float(distance),
        relative_distance=float(distance) / max(norm_sum / n, 1e-12), directions=directions,
        images=n,
        feature_shape=list(shape), feature_norm=norm_sum / n,
        kl_mean=sum(per_direction) / directions, kl_min=min(per_direction),
        kl_max=max(per_direction), sample_kl_min=sample_min_sum / n,
        sample_kl_max=sample_max_sum / n, accuracy=acc["clean"], accuracy_most=acc["most"],
        accuracy_least=acc["least"], drop_most=acc["clean"] - acc["most"],
        drop_least=acc["clean"] - acc["least"], seed=seed, direction_kl=per_direction,
    )


def _all_directions(net: Staged, stage: int, feature: Tensor, logits: Tensor, targets: Tensor,
                    distance: float, directions: int, seed: int,
                    kept: dict[tuple[int, int], Tensor]) -> tuple[Tensor, Tensor]:
    """``(kl, correct)``, both ``(images, directions)``: the KL of each moved feature's output
    against the unmoved one, and whether its top-1 prediction is right. ``kept`` holds the
    direction chunks drawn for earlier batches when all of them fit in ``KEEP_ELEMENTS``."""
    b = len(feature)
    chunk = max(1, PASS_BUDGET // b)
    keep = directions * feature[0].numel() <= KEEP_ELEMENTS
    kls, hits = [], []
    for first in range(0, directions, chunk):
        m = min(chunk, directions - first)
        u = kept.get((first, m))
        if u is None:
            u = random_directions(m, tuple(feature.shape[1:]), seed=seed, first=first,
                                  device=feature.device, dtype=feature.dtype)
            if keep:
                kept[(first, m)] = u
        moved = (feature[:, None] + distance * u[None]).flatten(0, 1)  # image-major
        after = net.run_from(stage - 1, moved).logits.view(b, m, -1)
        before = logits[:, None].expand(-1, m, -1)
        kls.append(kl_per_sample(before.flatten(0, 1), after.flatten(0, 1)).view(b, m))
        hits.append(after.argmax(dim=2).eq(targets[:, None]))
    return torch.cat(kls, dim=1), torch.cat(hits, dim=1)
