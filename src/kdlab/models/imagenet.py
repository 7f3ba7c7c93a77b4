"""ImageNet-size networks: torchvision's ResNets and MobileNetV2, and the KD papers' MobileNet v1.

The torchvision networks are used as they are (``weights=None`` unless ``pretrained``) and
seen through :class:`~kdlab.models.staged.view.Staged` by naming torchvision's own modules; for
``in_channels != 3`` only the first convolution is replaced. ``pretrained=True`` loads
torchvision's original ImageNet weights (``IMAGENET1K_V1``: the teachers of the KD papers'
ImageNet tables, e.g. ResNet-34 73.3 and ResNet-50 76.1 top-1; torchvision's newer
``IMAGENET1K_V2`` ResNet-50 comes from a different, much longer recipe) through its weights
API (a download); ``pretrained`` given as a path loads the same weights from a local ``.pth`` /
``.safetensors`` file instead. Tensors whose shape differs (the replaced first conv, a
classifier for another class count) stay fresh.

Stage divisions (five stages each):

- ResNet-18/34/50 (He et al., CVPR 2016), as in the FCFD authors' ``models/IN/resnet.py``:
  stage 0 = ``conv1`` + ``bn1`` + ``relu`` + ``maxpool``, stages 1..4 = ``layer1``..``layer4``;
  the head is global average pooling and ``fc``. Stage outputs are post-ReLU.
- MobileNet v1 (Howard et al., 2017; the student of the ImageNet ResNet-50 -> MobileNet pair in
  CRD, ReviewKD and FCFD), as in the FCFD authors' ``models/IN/mobilenet.py``: ``features`` holds
  a conv-BN-ReLU stem and 13 depthwise-separable units; stage 0 = ``features.0``, stage 1 =
  ``features.1-3``, stage 2 = ``features.4-5``, stage 3 = ``features.6-11``, stage 4 =
  ``features.12-13``; the head is global average pooling and ``fc``. Post-ReLU outputs.
- MobileNetV2 (Sandler et al., CVPR 2018; torchvision): the FCFD authors have no ImageNet
  version, so the division mirrors their CIFAR MobileNetV2: stage 0 = ``features.0`` (stem),
  stage 1 = ``features.1-3`` (the 16- and 24-channel groups), stage 2 = ``features.4-6`` (32),
  stage 3 = ``features.7-13`` (64 and 96), stage 4 = ``features.14-18`` (160, 320 and the 1x1
  conv to 1280); the head is global average pooling and ``classifier`` (dropout + linear).
  Strides 2, 4, 8, 16, 32, like the ResNets' stages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torchvision
from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.models import MODELS
from kdlab.models.init import he_init
from kdlab.models.staged.view import Staged
from kdlab.runtime.files import load_weights_only

_RESNET_STAGES = [["conv1", "bn1", "relu", "maxpool"], ["layer1"], ["layer2"], ["layer3"],
                  ["layer4"]]


def _names(prefix: str, first: int, last: int) -> list[str]:
    return [f"{prefix}.{i}" for i in range(first, last + 1)]


def _features_staged(net: nn.Module, ends: tuple[int, ...], classifier: str, in_channels: int,
                     input_size: int, num_classes: int) -> Staged:
    """Staged view of a network whose body is ``net.features``: stage ``i`` runs
    ``features[ends[i-1] + 1 .. ends[i]]`` (stage 0 is ``features[0 .. ends[0]]``)."""
    starts = (0, *(e + 1 for e in ends[:-1]))
    return Staged(
        net,
        stem=[],
        stages=[_names("features", a, b) for a, b in zip(starts, ends, strict=True)],
        classifier=[classifier],
        input_shape=(in_channels, input_size, input_size),
        num_classes=num_classes,
    )



def _read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A local checkpoint in torchvision's format: a ``.pth`` state dict or ``.safetensors``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"The pretrained weights file {path} does not exist; pass the path of "
                        "a downloaded torchvision .pth (or .safetensors) state dict.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = load_weights_only(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user mistake
        raise UserError(f"The pretrained weights file {path} could not be read ({err}); pass "
                        "a torchvision .pth (or .safetensors) state dict.") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"The pretrained weights file {path} is not a state dict of tensors; "
                        "pass a torchvision .pth (or .safetensors) state dict.")
    return state


def pretrained_state_dict(
    name: str, weights: torchvision.models.WeightsEnum, pretrained: bool | str | Path
) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict of ``name``: its download for ``pretrained=True``, the
    local ``.pth`` / ``.safetensors`` file for a path (a clear error when either fails)."""
    if isinstance(pretrained, (str, Path)):
        return _read_state_dict(pretrained)
    try:
        return weights.get_state_dict(progress=False)
    except (URLError, OSError, RuntimeError, ValueError) as err:
        file = Path(urlparse(weights.url).path).name
        raise UserError(
            f"The pretrained {name} weights could not be downloaded from {weights.url} "
            f"({err}); download {file} on a machine with internet access and pass its "
            f"local path instead, pretrained='/path/to/{file}'."
        ) from None


def _load_pretrained(
    net: nn.Module, name: str, weights: torchvision.models.WeightsEnum, pretrained: bool | str
) -> None:
    """Load ImageNet weights: torchvision's download for ``pretrained=True``, a local file for a
    path. Tensors whose shape differs (a replaced first conv, a classifier for another class
    count) keep their fresh initialisation; their names are left in
    ``net.kdlab_pretrained_skipped`` (a frozen teacher must have none)."""
    state = pretrained_state_dict(name, weights, pretrained)
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise UserError(f"The pretrained weights hold no tensor of torchvision's {name}; pass "
                        f"a checkpoint of torchvision's {name}.")
    net.load_state_dict(usable, strict=False)
    net.kdlab_pretrained_skipped = [k for k in own if k not in usable
                                    and not k.endswith("num_batches_tracked")]


def _torchvision_resnet(
    name: str, factory: Callable[..., nn.Module], weights: torchvision.models.WeightsEnum
) -> None:
    def build(
        *, num_classes: int, in_channels: int = 3, input_size: int = 224,
        pretrained: bool | str = False,
    ) -> Staged:
        net = factory(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        if pretrained:
            _load_pretrained(net, name, weights, pretrained)
        return Staged(
            net,
            stem=[],
            stages=_RESNET_STAGES,
            classifier=["fc"],
            input_shape=(in_channels, input_size, input_size),
            num_classes=num_classes,
        )

    build.__name__ = name
    build.__doc__ = f"torchvision {name} (He et al., CVPR 2016), five FCFD stages."
    MODELS.register(name)(build)


_torchvision_resnet("resnet18", torchvision.models.resnet18,
                    torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
_torchvision_resnet("resnet34", torchvision.models.resnet34,
                    torchvision.models.ResNet34_Weights.IMAGENET1K_V1)
_torchvision_resnet("resnet50", torchvision.models.resnet50,
                    torchvision.models.ResNet50_Weights.IMAGENET1K_V1)


@MODELS.register("mobilenet_v2")
def mobilenet_v2(
    *, num_classes: int, in_channels: int = 3, input_size: int = 224,
        pretrained: bool | str = False,
) -> Staged:
    """torchvision MobileNetV2 (Sandler et al., CVPR 2018), five stages as the CIFAR version."""
    net = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    if in_channels != 3:
        conv = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out")
        net.features[0][0] = conv
    if pretrained:
        _load_pretrained(net, "mobilenet_v2",
                         torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1, pretrained)
    return _features_staged(net, (0, 3, 6, 13, 18), "classifier", in_channels, input_size,
                            num_classes)


def _conv_bn_relu(in_planes: int, planes: int, stride: int, groups: int = 1,
                  kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(in_planes, planes, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU(inplace=True),
    ]


class MobileNetV1(nn.Module):
    """MobileNet v1 (Howard et al., arXiv:1704.04861), width 1.0: a 3x3 stride-2 conv stem,
    13 depthwise-separable units (3x3 depthwise conv-BN-ReLU, 1x1 conv-BN-ReLU), global
    average pooling and one linear layer; 4,231,976 parameters at 1000 classes."""

    # (output channels, stride) of the 13 depthwise-separable units.
    UNITS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
             (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        units = [nn.Sequential(*_conv_bn_relu(in_channels, 32, 2))]
        planes = 32
        for out, stride in self.UNITS:
            units.append(nn.Sequential(
                *_conv_bn_relu(planes, planes, stride, groups=planes),
                *_conv_bn_relu(planes, out, 1, kernel=1),
            ))
            planes = out
        self.features = nn.Sequential(*units)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(planes, num_classes)
        he_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.avgpool(self.features(x))))


@MODELS.register("mobilenet_v1")
def mobilenet_v1(*, num_classes: int, in_channels: int = 3, input_size: int = 224) -> Staged:
    """MobileNet v1 of the KD papers' ImageNet ResNet-50 -> MobileNet pair, five FCFD stages."""
    net = MobileNetV1(num_classes, in_channels)
    return _features_staged(net, (0, 3, 5, 11, 13), "fc", in_channels, input_size, num_classes)
