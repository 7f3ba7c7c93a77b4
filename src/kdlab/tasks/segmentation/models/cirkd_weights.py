"""CIRKD's weight files in kdlab's CIRKD networks (:mod:`~kdlab.tasks.segmentation.models.cirkd`).

Two kinds of file are read, both plain ``state_dict`` pickles:

- the ImageNet backbones CIRKD's README links (``resnet18-imagenet.pth``,
  ``resnet101-imagenet.pth``: the deep-stem ResNets of CSAILVision's semantic-segmentation
  code, keys ``conv1..3``, ``bn1..3``, ``layer1..4``, ``fc``; ``mobilenetv2-imagenet.pth``: keys
  ``features.<i>.conv.<j>`` of the MobileNetV2 whose blocks are one flat ``conv`` Sequential,
  plus ``features.18`` and ``classifier``, which the dilated backbone does not use);
- CIRKD's trained networks, e.g. the teacher ``deeplabv3_resnet101_citys_best_model.pth``
  (keys ``pretrained.*`` for the backbone, ``head.*``, ``auxlayer.*``).

:func:`to_kdlab` renames a key to kdlab's module names (torchvision's segmentation layout:
``backbone``, ``classifier``, ``aux_classifier``); :func:`is_segmentation_checkpoint` tells
the two kinds apart. Renaming only: no tensor is changed.
"""

from __future__ import annotations

import re

#: MobileNetV2 blocks: index in CIRKD's flat ``conv`` Sequential -> torchvision's layout, for
#: blocks without expansion (``features.1``) and with it
_MBV2_PLAIN = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MBV2_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}

#: CIRKD head names -> kdlab's (DeepLabV3's ASPP is torchvision's ``ASPP``: ``convs.0-4``,
#: ``project``; the head block's dropout sits at index 3 in both)
_HEAD_RULES = [
    (r"^head\.aspp\.b0\.(\d+)\.", r"classifier.0.convs.0.\1."),
    (r"^head\.aspp\.b([123])\.block\.(\d+)\.", r"classifier.0.convs.\1.\2."),
    (r"^head\.aspp\.b4\.gap\.(\d+)\.", r"classifier.0.convs.4.\1."),
    (r"^head\.aspp\.project\.", r"classifier.0.project."),
    (r"^head\.psp\.conv([1-4])\.(\d+)\.",
     lambda m: f"classifier.0.branches.{int(m[1]) - 1}.{int(m[2]) + 1}."),
    (r"^head\.block\.([012])\.", lambda m: f"classifier.{int(m[1]) + 1}."),
    (r"^head\.block\.4\.", "classifier.5."),  # DeepLabV3: the classifier closes the block
    (r"^head\.classifier\.", "classifier.5."),  # PSPNet: a module of its own
    (r"^auxlayer\.block\.", "aux_classifier."),
]


def _mobilenet_block(rest: str) -> str:
    """``<i>.conv.<j>.<param>`` of CIRKD's MobileNetV2 features -> torchvision's names."""
    m = re.match(r"^(\d+)\.conv\.(\d+)\.(.+)$", rest)
    if m is None:  # features.0 (conv, BN) has the same names in both
        return rest
    block, index, param = m.groups()
    table = _MBV2_PLAIN if block == "1" else _MBV2_EXPANDED
    return f"{block}.conv.{table[index]}.{param}"


def to_kdlab(key: str, *, mobilenet: bool) -> str | None:
    """kdlab's name for CIRKD's ``key`` (backbone file or trained network), or None for a
    tensor kdlab's network does not have (the ImageNet classifier, MobileNetV2's last 1x1
    conv ``features.18``)."""
    if key.startswith(("fc.", "classifier.")) or re.match(r"^features\.18\.", key):
        return None
    if key.startswith("pretrained."):
        key = key[len("pretrained."):]
        if mobilenet:
            key = key.removeprefix("net.")
    if mobilenet and key.startswith("features."):
        return "backbone." + _mobilenet_block(key[len("features."):])
    if key.startswith(("head.", "auxlayer.")):
        for pattern, repl in _HEAD_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                return new
        raise KeyError(key)
    return "backbone." + key


def is_segmentation_checkpoint(keys: list[str]) -> bool:
    """True for a CIRKD network's checkpoint (``pretrained.*`` / ``head.*`` keys), False for an
    ImageNet backbone file."""
    return any(k.startswith(("pretrained.", "head.")) for k in keys)
