"""A segmentation network as it is deployed: images -> per-pixel class scores.

The graph ``kdlab export`` writes is :class:`ScoreMaps`: the network's main score map,
upsampled (bilinear, ``align_corners=False``) to the input size, as evaluation uses it; an
auxiliary head (PSPNet's, DeepLabV3's, used only by the training loss) is left out, so the
deployed graph does not compute it. Batch, height and width stay free in the graph (the
network is fully convolutional).
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from kdlab.tasks.deploy import DeploySpec
from kdlab.tasks.segmentation.inference import score_map, upsample

#: the smallest height and width the graph accepts (below it a stride-32 backbone has
#: nothing left to pool)
MIN_SIZE = 32


def without_aux(net: nn.Module) -> nn.Module:
    """``net`` without its auxiliary head: a shallow twin sharing every module and weight
    but the ``aux_classifier`` (torchvision's convention); ``net`` itself is unchanged."""
    if getattr(net, "aux_classifier", None) is None:
        return net
    twin = copy.copy(net)
    twin._modules = dict(net._modules)  # its own module table: the original keeps its head
    twin.aux_classifier = None
    return twin


class ScoreMaps(nn.Module):
    """``images (B, C, H, W) -> scores (B, K, H, W)``: the main head's map at the input size."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = without_aux(net)
        self.training = net.training  # a wrapper, in the network's mode

    def forward(self, images: Tensor) -> Tensor:
        return upsample(score_map(self.net(images)), tuple(images.shape[-2:]))


def segmentation_spec(net: nn.Module, input_shape: tuple[int, ...],
                      num_classes: int | None) -> DeploySpec:
    """The :class:`~kdlab.tasks.deploy.DeploySpec` of a segmentation network."""
    c, h, w = input_shape
    k = num_classes or "K"
    return DeploySpec(
        ScoreMaps(net), ("scores",),
        {0: ("batch", 1), 2: ("height", MIN_SIZE), 3: ("width", MIN_SIZE)},
        f"images float32 (batch, {c}, height, width) -> scores float32 (batch, {k}, height, "
        f"width), class scores per pixel at the input size (argmax over dim 1: labels); "
        f"trained on {h}x{w}, height and width >= {MIN_SIZE}")
