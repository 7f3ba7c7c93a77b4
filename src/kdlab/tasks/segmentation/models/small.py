"""CPU networks for the embedded Fashion-MNIST scenes (64x64, one channel, 11 classes).

A teacher and a student of one family, so that a CPU run of a few epochs takes minutes and
the teacher clearly beats the student: kdlab's CIFAR ResNets (widths 16-16-32-64) made dense.

- Backbone: the CIFAR ResNet with a stride-2 stem conv and layer3 dilated by 2 (stride 1), so
  the output stride is 4 (16x16 maps at 64x64): stage strides 2, 2, 4, 4.
- Decoder: :func:`~kdlab.tasks.segmentation.models.heads.lite_aspp_head` (torchvision's ASPP, rates
  2 and 4, then a 3x3 conv-BN-ReLU and the 1x1 classifier) at ``head_width`` channels.
- Stages as the CIFAR ResNets (FCFD's division): stage 0 = ``conv1 bn1 relu``, stages 1..3 =
  ``layer1..3``; teacher and student both have four, at the same resolutions, so FCFD's
  bridges are 3x3 stride-1 convs and the decoders' score maps have one size.
- ``aux=True``: torchvision's FCN head on stage 2 (layer2).

``seg_resnet20`` (3 blocks a layer, decoder width 64; 408k parameters) teaches ``seg_resnet8``
(1 block a layer, decoder width 32; 132k parameters).

Measured with the shipped recipes (``recipes/scenes_seg/ce/``: 10,000 scenes, 15 epochs, 2
CPU cores): ``seg_resnet20`` 52.72 mIoU at a plateau (52.83 on another machine),
``seg_resnet8`` alone 51.59 (seed 0 of the results table);
the benchmark tables ``scenes_teachers_timed.md`` and ``scenes_seg_accuracy.md`` hold them.
A step of the teacher costs about 2.5 times the student's.
"""

from __future__ import annotations

from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCNHead

from kdlab.models.cifar.resnet import CifarResNet
from kdlab.models.staged.view import Staged
from kdlab.tasks.segmentation.models.backbones import dilate_
from kdlab.tasks.segmentation.models.base import (
    SegmentationNet,
    register,
    stage_names,
    staged_view,
)
from kdlab.tasks.segmentation.models.heads import lite_aspp_head

WIDTHS = (16, 16, 32, 64)
STAGES = stage_names("backbone", [["conv1", "bn1", "relu"], ["layer1"], ["layer2"], ["layer3"]])


def dense_cifar_resnet(depth: int, in_channels: int) -> CifarResNet:
    """The CIFAR ResNet-``depth`` at output stride 4: stride-2 stem, layer3 dilated by 2."""
    net = CifarResNet(depth, WIDTHS, num_classes=1, in_channels=in_channels)
    net.conv1.stride = (2, 2)
    dilate_(net.layer3, 2)
    return net


def _register(name: str, depth: int, head_width: int) -> None:
    def build(*, num_classes: int, in_channels: int = 1, input_size: int = 64,
              aux: bool = False) -> Staged:
        resnet = dense_cifar_resnet(depth, in_channels)
        layers = {"layer3": "out", **({"layer2": "aux"} if aux else {})}
        net = SegmentationNet(IntermediateLayerGetter(resnet, layers),
                              lite_aspp_head(WIDTHS[3], num_classes, head_width),
                              FCNHead(WIDTHS[2], num_classes) if aux else None)
        return staged_view(net, stages=STAGES, aux_stage=2, num_classes=num_classes,
                           in_channels=in_channels, input_size=input_size)

    register(name, build, f"CIFAR ResNet-{depth} made dense (output stride 4) with a "
                          f"{head_width}-wide light ASPP decoder: the CPU scenes network.")


_register("seg_resnet20", 20, 64)
_register("seg_resnet8", 8, 32)
