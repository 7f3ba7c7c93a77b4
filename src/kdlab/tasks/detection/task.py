"""Object detection: lists of box targets, the detector's own losses, COCO mAP.

Targets are a list (one per image) of ``{"boxes": float32 (n, 4) xyxy absolute pixels,
"labels": int64 (n,) in 1..K}`` (0 is the background, torchvision's convention); COCO also
gives ``"area"`` and ``"iscrowd"``, which evaluation counts as the official COCO evaluation
does (crowd regions are not trained on). Images are a ``(B, C, H, W)`` tensor or a list of
``(C, H, W)`` tensors, normalised by the loader. A network is a
:class:`~kdlab.tasks.detection.models.Detector`: its training pass returns a
:class:`~kdlab.tasks.detection.models.DetectionOutput`, its eval forward torchvision's detections.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.runtime.collectives import all_gather_rows, world_size
from kdlab.tasks.base import TASKS, Task
from kdlab.tasks.deploy import DeploySpec
from kdlab.tasks.detection.coco_map import coco_map
from kdlab.tasks.detection.models import DetectionOutput, check_detector

#: score above which the report's pictures draw a detection
FIGURE_SCORE = 0.5


def gt_rows(targets: Sequence[dict[str, Tensor]], image_ids: Sequence[int]) -> Tensor:
    """``(M, 8)`` float64 rows ``image, x1, y1, x2, y2, label, area, iscrowd`` of a batch."""
    rows = []
    for t, i in zip(targets, image_ids, strict=True):
        boxes = t["boxes"].detach().double().reshape(-1, 4)
        n = boxes.shape[0]
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        area = t["area"].double() if "area" in t else wh[:, 0] * wh[:, 1]
        crowd = t["iscrowd"].double() if "iscrowd" in t else boxes.new_zeros(n)
        rows.append(torch.cat([boxes.new_full((n, 1), float(i)), boxes,
                               t["labels"].double()[:, None], area[:, None], crowd[:, None]],
                              dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 8, dtype=torch.float64)


def det_rows(detections: Sequence[dict[str, Tensor]], image_ids: Sequence[int]) -> Tensor:
    """``(N, 7)`` float64 rows ``image, x1, y1, x2, y2, score, label`` of a batch."""
    rows = []
    for d, i in zip(detections, image_ids, strict=True):
        boxes = d["boxes"].detach().double().reshape(-1, 4)
        rows.append(torch.cat([boxes.new_full((boxes.shape[0], 1), float(i)), boxes,
                               d["scores"].detach().double()[:, None],
                               d["labels"].double()[:, None]], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 7, dtype=torch.float64)


def _image_ids(batch: Sequence[Any], seen: int) -> list[int]:
    """The dataset indices of a batch (its third element), or a running count."""
    n = len(batch[1])
    if len(batch) > 2 and batch[2] is not None:
        return [int(i) for i in batch[2]]
    return list(range(seen, seen + n))


def _to(images: Any, device: torch.device) -> Any:
    if isinstance(images, Tensor):
        return images.to(device)
    return [im.to(device) for im in images]


def _cat(rows: list[Tensor], width: int) -> Tensor:
    return torch.cat(rows).cpu() if rows else torch.zeros(0, width, dtype=torch.float64)


def _gather_rows(rows: Tensor, device: torch.device) -> Tensor:
    """Every rank's ``rows`` (column 0 an image id >= 0), concatenated in rank order. Each
    rank adds one placeholder row (image -1, dropped afterwards), so that no collective sees
    an empty tensor (e.g. no detections anywhere early in training)."""
    mine = torch.cat([rows, rows.new_full((1, rows.shape[1]), -1.0)]).to(device)
    out = torch.cat([part[0] for part in all_gather_rows(mine)]).cpu()
    return out[out[:, 0] >= 0]


@TASKS.register("detection")
class Detection(Task):
    """Box detection with a two-stage detector; ``map`` (COCO mAP@[.5:.95], percent) selects
    the best checkpoint."""

    name = "detection"
    primary = "map"

    def features(self, net: nn.Module, images: Any, targets: Any) -> DetectionOutput:
        """The detector's training pass (its losses, FPN features, sampled proposals)."""
        return check_detector(net, "network").features(images, targets)

    def loss(self, out: DetectionOutput, targets: Any) -> Tensor:
        """The detector's own losses, summed (RPN objectness + box, ROI class + box)."""
        return sum(out.losses.values(), out.images.new_zeros(()))

    def batch_size(self, targets: Any) -> int:
        return len(targets)

    def example_targets(self, batch: int, num_classes: int, size: tuple[int, int],
                        generator: torch.Generator, device: torch.device | str
                        ) -> list[dict[str, Tensor]]:
        """Three random boxes per image (a quarter to a half of the image wide, in its
        top-left three quarters) with labels 1..K."""
        h, w = size
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        targets = []
        for _ in range(batch):
            xy = torch.rand(3, 2, generator=generator) * 0.5
            wh = 0.25 + 0.25 * torch.rand(3, 2, generator=generator)
            targets.append({
                "boxes": (torch.cat([xy, xy + wh], dim=1) * scale).to(device),
                "labels": torch.randint(1, num_classes + 1, (3,), generator=generator).to(device),
            })
        return targets

    def predict(self, net: nn.Module, loader: Iterable[Any], *, device: torch.device,
                amp: str = "none") -> tuple[Tensor, Tensor, Tensor]:
        """This rank's ``(ground-truth rows, detection rows, image ids)`` over ``loader``."""
        from kdlab.runtime.precision import autocast

        was_training = net.training
        net.eval()
        gts, dets, ids = [], [], []
        seen = 0
        try:
            with torch.inference_mode():
                for batch in loader:
                    image_ids = _image_ids(batch, seen)
                    seen += len(image_ids)
                    with autocast(device, amp):
                        out = net(_to(batch[0], device))
                    gts.append(gt_rows(batch[1], image_ids))
                    dets.append(det_rows(out, image_ids))
                    ids.append(torch.tensor(image_ids, dtype=torch.float64))
        finally:
            net.train(was_training)
        return (_cat(gts, 8), _cat(dets, 7),
                torch.cat(ids) if ids else torch.zeros(0, dtype=torch.float64))

    def evaluate(self, net: nn.Module, loader: Iterable[Any], *, device: torch.device,
                 amp: str = "none") -> dict[str, float]:
        """COCO box metrics of ``net`` over the whole split: every rank's ground truth and
        detections are gathered (``all_gather_rows``) and evaluated together."""
        gt, det, ids = self.predict(net, loader, device=device, amp=amp)
        if world_size() > 1:
            backend = device if device.type == "cuda" else torch.device("cpu")
            gt, det, ids = (_gather_rows(x, backend) for x in (gt, det, ids[:, None]))
            ids = ids[:, 0]
        metrics = coco_map(gt, det, ids)
        metrics["images"] = float(len(set(ids.long().tolist())))
        return metrics

    def deploy(self, net: nn.Module, input_shape: tuple[int, ...]) -> DeploySpec:
        """One image -> boxes, scores, labels (:mod:`kdlab.tasks.detection.deploy`)."""
        from kdlab.tasks.detection.deploy import detection_spec

        return detection_spec(net, input_shape)

    def report_figures(self, out_dir: Any, networks: dict[str, nn.Module], loader: Any, *,
                       device: torch.device) -> list[str]:
        """``detections.png``: a few validation images, their ground truth beside every
        network's boxes scoring at least :data:`FIGURE_SCORE` (teacher beside student),
        labelled with class name and score."""
        from kdlab.tasks.detection.figures import draw_detections

        batch = next(iter(loader), None)
        if batch is None:
            return []
        images = [im.detach().cpu() for im in batch[0]][:4]
        targets = [{k: v.detach().cpu() for k, v in t.items()} for t in batch[1][:4]]
        found: dict[str, list[dict[str, Tensor]]] = {}
        for name, net in networks.items():
            was_training = net.training
            net.eval()
            with torch.inference_mode():
                out = net([im.to(device) for im in images])
            net.train(was_training)
            found[name] = [{k: v.cpu() for k, v in d.items()} for d in out]
        path = Path(out_dir) / "detections.png"
        draw_detections(path, images, targets, found, min_score=FIGURE_SCORE,
                        name=self.label_name)
        return [path.name]
