"""What every segmentation builder shares: the plain network, its staged view, registration.

:class:`SegmentationNet` has the shape and the ``forward`` contract of torchvision's
segmentation models (``backbone`` returning ``{"out", "aux"}``, ``classifier``,
``aux_classifier``; ``net(x)`` returns ``{"out": ..., "aux": ...}`` upsampled to the input),
so kdlab's own networks export and load like torchvision's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.models import MODELS
from kdlab.models.staged.view import Decoder, Staged, no_pool

TASK = "segmentation"


class SegmentationNet(nn.Module):
    """A backbone (an ``IntermediateLayerGetter``: ``{"out": last map, "aux": aux map}``), a
    head ``classifier`` and an optional ``aux_classifier``; the plain forward upsamples both
    score maps to the input size (bilinear, ``align_corners=False`` as torchvision's, or the
    network's ``align_corners``)."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 aux_classifier: nn.Module | None = None, *,
                 align_corners: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        result = OrderedDict()
        result["out"] = F.interpolate(self.classifier(features["out"]), size=size,
                                      mode="bilinear", align_corners=self.align_corners)
        if self.aux_classifier is not None:
            result["aux"] = F.interpolate(self.aux_classifier(features["aux"]), size=size,
                                          mode="bilinear", align_corners=self.align_corners)
        return result


def stage_names(prefix: str, groups: Sequence[Sequence[str | int]]) -> list[list[str]]:
    """Dotted module names ``prefix.name`` for every stage's group of child names."""
    return [[f"{prefix}.{n}" for n in group] for group in groups]


def staged_view(
    net: nn.Module, *, stages: Sequence[Sequence[str]], aux_stage: int | None,
    num_classes: int, in_channels: int, input_size: int, decoder: Decoder | None = None,
    pre_pool: Sequence[str] | None = None, classifier: Sequence[str] | None = None,
) -> Staged:
    """The design's segmentation view of ``net``: the given backbone stages, the head
    ``net.classifier`` split into its layers but the last (``pre_pool``) and the last 1x1
    conv (``classifier``), identity pool, and ``net.aux_classifier`` on stage ``aux_stage``
    when the network has one. ``pre_pool`` / ``classifier`` override the split (a decoder)."""
    if pre_pool is None or classifier is None:
        last = len(net.classifier) - 1
        pre_pool = [f"classifier.{i}" for i in range(last)]
        classifier = [f"classifier.{last}"]
    aux = None
    if getattr(net, "aux_classifier", None) is not None:
        assert aux_stage is not None
        aux = (aux_stage, ["aux_classifier"])
    return Staged(
        net, stem=[], stages=stages, pre_pool=pre_pool, pool=no_pool, classifier=classifier,
        input_shape=(in_channels, input_size, input_size), num_classes=num_classes, aux=aux,
        decoder=decoder,
    )


def register(name: str, build: Callable[..., Staged], doc: str) -> None:
    """Register a segmentation builder under ``name`` (its docstring's first line is what
    ``kdlab list models`` shows)."""
    build.__name__ = name
    build.__doc__ = doc
    build.task = TASK  # type: ignore[attr-defined]
    MODELS.register(name)(build)
