"""CIRKD's networks (``*_cirkd``) against CIRKD @ 48eb81b: parameter counts, the deep stem,
every tensor of CIRKD's state dicts renamed onto kdlab's (names and shapes from
``tests/fixtures/cirkd/state_dict_shapes.json``), and loading CIRKD's weight files.

The counts were taken by building CIRKD's own modules (``models/deeplabv3.py``,
``deeplabv3_mobile.py``, ``pspnet.py``; 19 classes, the auxiliary head as CIRKD trains them)
beside kdlab's; the same run loaded CIRKD's state dicts into kdlab's networks through
:func:`~kdlab.tasks.segmentation.models.cirkd_weights.to_kdlab` and found the eval-mode score
maps and decoder features equal (float64: within 1e-15 for ResNet-18 / MobileNetV2 / PSPNet-18,
1e-10 for ResNet-101).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdlab.errors import UserError
from kdlab.models import build_model
from kdlab.tasks.segmentation.models.cirkd_weights import is_segmentation_checkpoint, to_kdlab

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "cirkd" / "state_dict_shapes.json"
#: parameters of CIRKD's modules (19 classes), counted from CIRKD @ 48eb81b's code; the README
#: and the issue 20 notes quote 13.61M, 61.12M and 3.23M
CIRKD_PARAMS = {
    ("deeplabv3_resnet18_cirkd", True): 13_607_974,
    ("deeplabv3_resnet101_cirkd", True): 61_118_950,
    ("deeplabv3_mobilenetv2_cirkd", False): 3_233_171,
    ("pspnet_resnet18_cirkd", True): 12_919_334,
}
MOBILENET = {"deeplabv3_mobilenetv2_cirkd"}


def _shapes() -> dict[str, dict[str, list[int]]]:
    return json.loads(FIXTURE.read_text())["networks"]


def _build(name: str, aux: bool, pretrained: bool | str = False):
    torch.manual_seed(0)
    return build_model(name, num_classes=19, input_size=64, pretrained=pretrained,
                       options={"aux": aux})


@pytest.mark.parametrize(("name", "aux"), list(CIRKD_PARAMS))
def test_parameter_counts_are_cirkds(name, aux):
    net = _build(name, aux)
    assert sum(p.numel() for p in net.parameters()) == CIRKD_PARAMS[(name, aux)]


def test_pspnet_resnet101_head_is_512_wide():
    net = _build("pspnet_resnet101_cirkd", False)
    assert net.embedding_dim == 512  # CIRKD's models/pspnet.py (the torchvision-based one: 256)


def test_deep_stem_feeds_128_channels_to_layer1():
    backbone = _build("deeplabv3_resnet18_cirkd", False).net.backbone
    assert [backbone[n].out_channels for n in ("conv1", "conv2", "conv3")] == [64, 64, 128]
    block = backbone["layer1"][0]
    assert block.conv1.in_channels == 128 and block.downsample is not None
    assert block.downsample[0].weight.shape == (64, 128, 1, 1)


@pytest.mark.parametrize("name", sorted(_shapes()))
def test_every_cirkd_tensor_has_its_place_in_kdlabs_network(name):
    """Renaming CIRKD's state dict covers kdlab's network exactly, shape for shape."""
    cirkd = _shapes()[name]
    net = _build(name, name not in MOBILENET).net
    own = {k: list(v.shape) for k, v in net.state_dict().items()}
    renamed = {to_kdlab(k, mobilenet=name in MOBILENET): v for k, v in cirkd.items()}
    assert None not in renamed  # a trained network has no ImageNet classifier
    assert renamed == own
    assert is_segmentation_checkpoint(list(cirkd))


def _file(tmp_path: Path, name: str, *, backbone_only: bool) -> tuple[Path, dict]:
    """A CIRKD file with random tensors: the whole network, or its ImageNet backbone file
    (``pretrained.`` stripped, plus the ImageNet classifier CIRKD's backbone files carry)."""
    g = torch.Generator().manual_seed(3)
    state = {k: torch.randn(*s, generator=g) if s else torch.tensor(7)
             for k, s in _shapes()[name].items()}
    if backbone_only:
        state = {k[len("pretrained."):]: v for k, v in state.items()
                 if k.startswith("pretrained.")}
        if name in MOBILENET:
            state = {k.removeprefix("net."): v for k, v in state.items()}
            state["features.18.0.weight"] = torch.randn(1280, 320, 1, 1, generator=g)
            state["classifier.1.weight"] = torch.randn(1000, 1280, generator=g)
        else:
            state["fc.weight"] = torch.randn(1000, 512, generator=g)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return path, state


def test_a_trained_cirkd_network_loads_every_tensor(tmp_path):
    path, state = _file(tmp_path, "deeplabv3_resnet18_cirkd", backbone_only=False)
    net = _build("deeplabv3_resnet18_cirkd", True, pretrained=str(path)).net
    assert net.kdlab_pretrained_skipped == []
    own = net.state_dict()
    assert torch.equal(own["backbone.conv3.weight"], state["pretrained.conv3.weight"])
    assert torch.equal(own["classifier.0.convs.4.1.weight"], state["head.aspp.b4.gap.1.weight"])
    assert torch.equal(own["classifier.5.weight"], state["head.block.4.weight"])
    assert torch.equal(own["aux_classifier.4.bias"], state["auxlayer.block.4.bias"])


@pytest.mark.parametrize("name", ["deeplabv3_resnet18_cirkd", "deeplabv3_mobilenetv2_cirkd"])
def test_an_imagenet_backbone_file_loads_the_backbone_only(tmp_path, name):
    path, state = _file(tmp_path, name, backbone_only=True)
    net = _build(name, False, pretrained=str(path)).net
    assert net.kdlab_pretrained_skipped
    assert all(not k.startswith("backbone.") for k in net.kdlab_pretrained_skipped)
    key = "features.17.conv.6.weight" if name in MOBILENET else "layer4.1.conv2.weight"
    kdlab_key = ("backbone.17.conv.2.weight" if name in MOBILENET
                 else "backbone.layer4.1.conv2.weight")
    assert torch.equal(net.state_dict()[kdlab_key], state[key])


def test_weights_are_read_from_a_file_only_and_must_fit(tmp_path):
    with pytest.raises(UserError, match="cannot be downloaded"):
        _build("deeplabv3_resnet18_cirkd", False, pretrained=True)
    path, _ = _file(tmp_path, "deeplabv3_resnet18_cirkd", backbone_only=True)
    with pytest.raises(UserError, match="has shape"):  # a ResNet-18 file for a ResNet-101
        _build("deeplabv3_resnet101_cirkd", False, pretrained=str(path))
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="not a CIRKD ImageNet backbone file"):
        _build("deeplabv3_resnet18_cirkd", False, pretrained=str(path))
