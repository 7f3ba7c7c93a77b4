"""Semantic segmentation: per-pixel labels, pixel-wise cross-entropy, mIoU.

Targets are ``(B, H, W)`` int64 label maps with an ignore index (255 unless the dataset says
otherwise). A network's score map ``Features.logits`` is at the decoder's resolution; the
loss and the metrics upsample it bilinearly to the label size (``align_corners=False``, as
torchvision's segmentation references; the option ``align_corners: true`` gives CIRKD's and
the SKD authors' upsampling).
The label loss is the pixel-wise cross-entropy averaged over the non-ignored pixels, plus
``aux_weight`` times the same loss of the auxiliary head's map (``Features.extras["aux"]``)
when the network has one: 0.4 as in PSPNet (Zhao et al., CVPR 2017, Sec. 3.3) and CIRKD's
``train_baseline.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.runtime.collectives import all_reduce_sum
from kdlab.runtime.precision import autocast, widen
from kdlab.tasks.base import TASKS, Task
from kdlab.tasks.deploy import DeploySpec
from kdlab.tasks.segmentation.inference import score_map, sliding, upsample, whole
from kdlab.tasks.segmentation.metrics import class_iou, confusion_matrix, scores

DEFAULT_IGNORE = 255
#: the auxiliary head's loss weight of PSPNet (Sec. 3.3) and CIRKD
AUX_WEIGHT = 0.4


def pixel_ce(scores: Tensor, targets: Tensor, ignore_index: int,
             align_corners: bool = False) -> Tensor:
    """Cross-entropy of ``scores`` ``(B, K, h, w)`` upsampled to the targets' size, averaged
    over the non-ignored pixels (0, not NaN, when a batch has none); half-precision scores
    in float32, float64 ones in float64."""
    logits = upsample(widen(scores), tuple(targets.shape[-2:]), align_corners)
    total = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


def aux_map(out: Any) -> Tensor | None:
    """The auxiliary head's score map of a network output, if it has one."""
    if isinstance(out, dict):
        return out.get("aux")
    extras = getattr(out, "extras", None)
    return extras.get("aux") if extras else None


@TASKS.register("segmentation")
class Segmentation(Task):
    """Targets ``(B, H, W)`` int64 label maps; networks return ``(B, K, h, w)`` score maps.

    Options: ``aux_weight`` (weight of the auxiliary head's loss; class default 0.4),
    ``window`` / ``stride`` (sliding-window evaluation with ``window``-sized crops every
    ``stride`` pixels, default two thirds of the window; whole images when ``window`` is None),
    ``num_classes`` (the confusion matrix's size; by default the network's ``num_classes``
    or the score map's channels), ``ignore_index`` (the label value left out of loss and
    metrics, e.g. 0 to leave the background out; default the dataset's, 255). With another
    ``ignore_index`` than the dataset's, the dataset's value (padding, unlabelled pixels) is
    left out too: it is ``void_index``, relabelled to ``ignore_index`` (:meth:`labels`).
    ``align_corners``: how score maps are upsampled to the labels for the loss, the training
    score and evaluation (default False; CIRKD and the SKD authors use True).
    """

    name = "segmentation"
    primary = "miou"
    train_score_name = "pixel_acc"
    aux_weight: ClassVar[float] = AUX_WEIGHT

    @dataclass
    class Options:
        """Segmentation's ``task_options`` (the keyword arguments of its ``__init__``)."""

        # weight of the auxiliary head's loss (PSPNet, Sec. 3.3)
        aux_weight: float = setting(AUX_WEIGHT, range=">= 0")
        # sliding-window evaluation: crop size, one side or [height, width]; null = whole images
        window: int | list[int] | None = setting(None, range=">= 1")
        # the windows' step, one side or [height, width]; null = two thirds of the window
        stride: int | list[int] | None = setting(None, range=">= 1")
        # a label value to leave out of loss and metrics (the dataset's own stays left out)
        ignore_index: int | None = setting(None, range="any")
        # score maps upsampled to the labels with align_corners (CIRKD, the SKD authors: true)
        align_corners: bool = False

        def check(self, where: str, task: str | None = None) -> None:
            """A window or a stride given as a list is [height, width]."""
            for key in ("window", "stride"):
                value = getattr(self, key)
                if isinstance(value, list) and len(value) != 2:
                    raise UserError(f"{where}.{key} must be one size or [height, width], got "
                                    f"{value}.")

    def __init__(self, ignore_index: int | None = None, *, aux_weight: float | None = None,
                 window: int | tuple[int, int] | None = None,
                 stride: int | tuple[int, int] | None = None,
                 num_classes: int | None = None, void_index: int | None = None,
                 align_corners: bool = False,
                 class_names: tuple[str, ...] | None = None) -> None:
        super().__init__(DEFAULT_IGNORE if ignore_index is None else ignore_index,
                         num_classes=num_classes, class_names=class_names)
        self.align_corners = align_corners
        self.void_index = void_index if void_index != self.ignore_index else None
        if aux_weight is not None:
            self.aux_weight = aux_weight  # type: ignore[misc]
        self.window = (window, window) if isinstance(window, int) else window
        if self.window is not None and stride is None:
            stride = (max(2 * self.window[0] // 3, 1), max(2 * self.window[1] // 3, 1))
        self.stride = (stride, stride) if isinstance(stride, int) else stride

    def example_targets(self, batch: int, num_classes: int, size: tuple[int, int],
                        generator: torch.Generator, device: torch.device | str) -> Tensor:
        """Random label maps ``(batch, H, W)`` in ``0..K-1``."""
        return torch.randint(0, num_classes, (batch, *size), generator=generator).to(device)

    def labels(self, targets: Tensor) -> Tensor:
        """``targets`` with the dataset's void value (:attr:`void_index`) set to
        :attr:`ignore_index`, so that both are left out."""
        if self.void_index is None:
            return targets
        return targets.masked_fill(targets == self.void_index, self.ignore_index)

    # ----------------------------------------------------------------- a training step
    def loss(self, out: Any, targets: Tensor) -> Tensor:
        targets = self.labels(targets)
        loss = pixel_ce(score_map(out), targets, self.ignore_index, self.align_corners)
        aux = aux_map(out)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * pixel_ce(aux, targets, self.ignore_index,
                                                     self.align_corners)
        return loss

    def train_counts(self, outputs: Any, targets: Tensor) -> Tensor:
        """``[correct, labelled]`` pixels of the upsampled score map's argmax."""
        with torch.no_grad():
            targets = self.labels(targets)
            pred = upsample(score_map(outputs).detach(), tuple(targets.shape[-2:]),
                            self.align_corners).argmax(1)
            valid = targets != self.ignore_index
            hits = (pred.eq(targets) & valid).sum()
            return torch.stack([hits.double(), valid.sum().double()])

    # ----------------------------------------------------------------- evaluation
    def predict(self, net: nn.Module, images: Tensor) -> Tensor:
        """Score maps at the image size, whole-image or sliding-window (see the options)."""
        if self.window is None:
            return whole(net, images, self.align_corners)
        assert self.stride is not None
        return sliding(net, images, self.window, self.stride, self.align_corners)

    def confusion(self, net: nn.Module, loader: Iterable[Any], device: torch.device,
                  amp: str) -> tuple[Tensor, Tensor]:
        """This rank's confusion matrix and ``[loss sum, pixels]`` (float64) over ``loader``."""
        k = self.num_classes or getattr(net, "num_classes", None)
        cm = None if k is None else torch.zeros(k, k, dtype=torch.int64, device=device)
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        for batch in loader:
            images, targets = batch[0].to(device), self.labels(batch[1].to(device))
            with autocast(device, amp):
                out = self.predict(net, images)
            out = out.float()
            if cm is None:
                k = out.shape[1]
                cm = torch.zeros(k, k, dtype=torch.int64, device=device)
            cm += confusion_matrix(out.argmax(1), targets, cm.shape[0], self.ignore_index)
            sums[0] += F.cross_entropy(out, targets, ignore_index=self.ignore_index,
                                       reduction="sum").double()
            sums[1] += (targets != self.ignore_index).sum()
        if cm is None:
            raise ValueError("this rank had no validation batch and the number of classes "
                             "is unknown; pass num_classes to the segmentation task")
        return cm, sums

    def evaluate(self, net: nn.Module, loader: Iterable[Any], *, device: torch.device,
                 amp: str = "none") -> dict[str, float]:
        """``miou``, ``pixel_acc``, ``mean_acc`` (percent), ``loss`` (mean pixel CE) and
        ``pixels`` over the whole split: one confusion matrix, summed over the ranks.

        Per-class IoU is not returned (ADE20K would add 150 columns to ``metrics.csv``):
        :meth:`report_figures` writes it to ``class_iou.csv``."""
        was_training = net.training
        net.eval()
        try:
            with torch.inference_mode():
                cm, sums = self.confusion(net, loader, device, amp)
        finally:
            net.train(was_training)
        all_reduce_sum(cm)
        all_reduce_sum(sums)
        result: dict[str, float] = {k: float(v) for k, v in scores(cm).items()}
        result["loss"] = float(sums[0] / sums[1].clamp(min=1))
        return result

    def deploy(self, net: nn.Module, input_shape: tuple[int, ...]) -> DeploySpec:
        """Images -> score maps at the input size, batch, height and width free
        (:mod:`kdlab.tasks.segmentation.deploy`)."""
        from kdlab.tasks.segmentation.deploy import segmentation_spec

        return segmentation_spec(net, input_shape, self.num_classes)

    # ----------------------------------------------------------------- report
    def report_figures(self, out_dir: Any, networks: dict[str, nn.Module], loader: Any, *,
                       device: torch.device) -> list[str]:
        """``segmentation.png``: a few validation images, their ground truth and each
        network's prediction side by side; ``class_iou.csv``: per-class IoU of each network
        over ``loader`` (this process's part of the split)."""
        from kdlab.tasks.segmentation.figures import class_iou_csv, prediction_grid

        out_dir = Path(out_dir)
        images, targets = next(iter(loader))[:2]
        images, targets = images[:4].to(device), self.labels(targets[:4].to(device))
        preds = {}
        ious = {}
        for name, net in networks.items():
            was_training = net.training
            net.eval()
            try:
                with torch.inference_mode():
                    preds[name] = self.predict(net, images).argmax(1).cpu()
                    ious[name] = class_iou(self.confusion(net, loader, device, "none")[0])
            finally:
                net.train(was_training)
        prediction_grid(out_dir / "segmentation.png", images.cpu(), targets.cpu(), preds,
                        self.ignore_index, name=self.label_name)
        class_iou_csv(out_dir / "class_iou.csv", ious)
        return ["segmentation.png", "class_iou.csv"]
