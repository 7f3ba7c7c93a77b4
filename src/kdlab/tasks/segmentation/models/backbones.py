"""Backbone surgery that keeps torchvision's ImageNet state dicts loadable.

- :func:`dilate_`: output stride 8 for networks torchvision cannot dilate itself (ResNet-18's
  BasicBlocks, MobileNetV2): every stride-2 convolution of a layer becomes stride 1, its 3x3
  kernels get dilation ``d // 2`` and the layer's other 3x3 kernels dilation ``d``. This is the
  rule of the dilated backbones of PSPNet / CIRKD (the first block keeps the previous rate), and
  the rule torchvision's ``replace_stride_with_dilation`` applies to Bottleneck ResNets; only
  stride, dilation and padding change, never a tensor.
- :func:`replace_first_conv`: another number of input channels (the first conv is fresh).
- :func:`load_backbone`: ImageNet weights into ``net.backbone`` from a local file (or
  torchvision's download for ``True``); every tensor left untrained, the decoder's included, is
  listed in ``net.kdlab_pretrained_skipped`` (so such a network is not taken for a trained
  teacher).
"""

from __future__ import annotations

from pathlib import Path

import torchvision
from torch import nn

from kdlab.errors import UserError
from kdlab.models.imagenet import pretrained_state_dict


def dilate_(layer: nn.Module, dilation: int) -> None:
    """Turn ``layer``'s stride-2 convolutions to stride 1 and dilate its 3x3 kernels, in place:
    the strided 3x3 conv gets ``dilation // 2`` (the rate before this layer), the others
    ``dilation``; 1x1 convs (the shortcut) only lose their stride."""
    for m in layer.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        rate = dilation
        if m.stride == (2, 2):
            m.stride = (1, 1)
            rate = max(dilation // 2, 1)
        if m.kernel_size == (3, 3):
            m.dilation = (rate, rate)
            m.padding = (rate, rate)


def replace_first_conv(net: nn.Module, in_channels: int) -> None:
    """Give ``net``'s first convolution ``in_channels`` inputs (a fresh He-initialised conv
    with the same output channels, kernel, stride, padding and bias)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)


def load_backbone(
    net: nn.Module, name: str, weights: torchvision.models.WeightsEnum,
    pretrained: bool | str | Path, *, prefix: str = "",
) -> None:
    """Load torchvision's ImageNet ``name`` weights into ``net.backbone``.

    ``prefix``: the part of the classification network's keys that the backbone drops
    (``"features."`` for MobileNets, whose backbone is their ``features``). Tensors whose shape
    differs (a replaced first conv) stay fresh.
    """
    state = pretrained_state_dict(name, weights, pretrained)
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = net.backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"The pretrained weights hold no tensor of torchvision's {name}; pass "
                        f"a checkpoint of torchvision's ImageNet {name}.")
    net.backbone.load_state_dict(usable, strict=False)
    loaded = {f"backbone.{k}" for k in usable}
    net.kdlab_pretrained_skipped = [k for k in net.state_dict() if k not in loaded
                                    and not k.endswith("num_batches_tracked")]
