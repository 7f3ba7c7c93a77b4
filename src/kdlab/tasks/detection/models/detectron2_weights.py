"""Detectron2 weight files (``.pkl``) loaded into kdlab's torchvision Faster R-CNN FPN.

Three kinds of file, told apart as Detectron2 v0.6 tells them (facebookresearch/detectron2 @
d1e04565 ``checkpoint/detection_checkpoint.py``, ``DetectionCheckpointer._load_file``):

- a **Detectron2 model-zoo detector** (``model_final_*.pkl``): a pickle ``{"model": {name:
  ndarray}, "__author__": ...}`` in Detectron2's module names (``backbone.bottom_up.res2.0.
  conv1.weight``, ``backbone.fpn_lateral2``, ``proposal_generator.rpn_head.*``,
  ``roi_heads.box_head.fc1``, ``roi_heads.box_predictor.*``); the same layout without the
  ``backbone.bottom_up.`` prefix is a backbone file (e.g. ``tools/convert-torchvision-to-d2.py``
  output, ``"__author__": "torchvision"``, whose ``stem.fc`` classifier is dropped);
- an **MSRA / Caffe2 ImageNet backbone** (``R-50.pkl``, ``R-101.pkl``): a pickle of Caffe2
  blobs (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ``res2_0_branch1_bn_b``, ...;
  ``*_momentum`` dropped, the ``fc1000`` classifier dropped), renamed as
  ``checkpoint/c2_model_loading.py`` (``convert_basic_c2_names``) renames them; its
  FrozenBatchNorm layers carry only a scale and a bias, so their running mean and variance are
  0 and 1, as Detectron2's ``FrozenBatchNorm2d._load_from_state_dict`` fills them;
- a Caffe2 *detection* file (``"blobs"``, Detectron1's model zoo) is refused: the FCFD
  authors' configs use none.

Names and layouts mapped onto torchvision's: stem ``conv1`` / ``bn1``; ``resS.B.convI(.norm)``
-> ``layer{S-1}.B.convI`` / ``bnI``; ``shortcut(.norm)`` -> ``downsample.0`` / ``.1``;
``fpn_lateralS`` / ``fpn_outputS`` -> ``fpn.inner_blocks`` / ``layer_blocks`` ``[S-2]``; RPN
``conv`` / ``objectness_logits`` / ``anchor_deltas`` -> ``head.conv`` / ``cls_logits`` /
``bbox_pred`` (the same ``(A, 4)`` delta order); ``fc1`` / ``fc2`` -> ``fc6`` / ``fc7``. The box
predictor: Detectron2's ``cls_score`` puts the background *last* and ``bbox_pred`` has class-
specific deltas for the K object classes only (``FastRCNNOutputLayers``); torchvision's puts the
background first and has ``(K + 1) x 4`` deltas, so the background row moves to the front and the
background's deltas are 0 (torchvision never reads them). A Detectron2 COCO detector (K = 80,
contiguous ids in the order of COCO's category ids, as ``data/datasets/builtin_meta.py`` lists
them) loaded into kdlab's COCO detector (K = 90: labels are COCO's category ids) gets each class
at its category id; the ten ids COCO leaves unused get weight 0 and bias -1e4 (softmax
probability exactly 0).

Every tensor is checked: an unknown name, a missing one or another shape is a
:class:`~kdlab.errors.UserError` and nothing is loaded. ``pixel_mean`` / ``pixel_std`` and
``anchor_generator.cell_anchors`` entries of older files are not weights (the detector's
options set them) and are skipped. The pickle is read by an unpickler that builds only numpy
arrays, dicts, lists, strings and numbers.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from kdlab.errors import UserError

#: COCO's 80 category ids in Detectron2's contiguous order (sorted; ids 12, 26, 29, 30, 45,
#: 66, 68, 69, 71, 83 are unused in COCO 2017)
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91)
                          if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
#: the bias of a class the Detectron2 file does not have (softmax probability 0)
ABSENT_CLASS_BIAS = -1.0e4
#: entries of Detectron2 files that are not weights of the network
NOT_WEIGHTS = re.compile(r"(^|\.)(pixel_mean|pixel_std|num_batches_tracked)$"
                         r"|anchor_generator\.cell_anchors")

_SAFE = {("collections", "OrderedDict"), ("builtins", "dict"), ("builtins", "list"),
         ("numpy", "ndarray"), ("numpy", "dtype"),
         ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
         ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only numpy arrays and plain containers; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weight file")


@dataclass
class D2File:
    """The weights of a Detectron2 ``.pkl`` in Detectron2's names, and who wrote it."""

    weights: dict[str, np.ndarray]
    author: str

    @property
    def whole(self) -> bool:
        """A whole detector (else the ImageNet weights of a backbone)."""
        return any(k.startswith(("backbone.", "roi_heads.")) for k in self.weights)


def read_pkl(path: Path) -> D2File:
    """The weights of a model-zoo, converted or MSRA ``.pkl`` (see the module doc)."""
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"{str(path)!r} is not a readable Detectron2 weight file ({err}); "
                        "give a model-zoo model_final_*.pkl or an MSRA R-50.pkl / R-101.pkl."
                        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{str(path)!r} holds no dict of weights; give a Detectron2 .pkl.")
    if "model" in data and "__author__" in data:
        return D2File({k: np.asarray(v) for k, v in data["model"].items()},
                      str(data["__author__"]))
    if "blobs" in data:
        raise UserError(f"{str(path)!r} is a Caffe2 (Detectron1) detection file; kdlab reads "
                        "Detectron2 model-zoo detectors and MSRA ImageNet backbones only.")
    blobs = {k: np.asarray(v) for k, v in data.items() if not k.endswith("_momentum")}
    return D2File(caffe2_to_d2(blobs), "Caffe2")


_C2_BRANCH = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2",
              "branch2c": "conv3"}
_C2_PARAM = {"w": "weight", "b": "bias", "bn_s": "norm.weight", "bn_b": "norm.bias",
             "bn_rm": "norm.running_mean", "bn_riv": "norm.running_var"}
_C2_BLOCK = re.compile(r"^res(\d)_(\d+)_(branch1|branch2a|branch2b|branch2c)_(w|b|bn_s|bn_b|"
                       r"bn_rm|bn_riv)$")
_C2_STEM = re.compile(r"^(conv1|res_conv1)_(w|b|bn_s|bn_b|bn_rm|bn_riv)$")


def caffe2_to_d2(blobs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MSRA ImageNet ResNet blobs in Detectron2's backbone names (``stem.conv1.weight``,
    ``res2.0.conv1.norm.weight``, ...); the ``fc1000`` / ``pred`` classifier is dropped and an
    unknown blob is a UserError."""
    out: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in blobs.items():
        stem, block = _C2_STEM.match(name), _C2_BLOCK.match(name)
        if stem:
            out[f"stem.conv1.{_C2_PARAM[stem.group(2)]}"] = value
        elif block:
            stage, index, branch, param = block.groups()
            out[f"res{stage}.{index}.{_C2_BRANCH[branch]}.{_C2_PARAM[param]}"] = value
        elif not re.match(r"^(fc1000|pred)_[wb]$", name):
            unknown.append(name)
    if unknown:
        raise UserError(f"The Caffe2 file has {len(unknown)} blob(s) that are not an MSRA "
                        f"ResNet's ({', '.join(sorted(unknown)[:3])}); give R-50.pkl / "
                        "R-101.pkl or a Detectron2 model-zoo file.")
    return out


_BODY = [(re.compile(r"^stem\.conv1\.weight$"), "conv1.weight"),
         (re.compile(r"^stem\.conv1\.norm\.(\w+)$"), r"bn1.\1"),
         (re.compile(r"^res(\d)\.(\d+)\.conv(\d)\.weight$"), "layer{0}.{1}.conv{2}.weight"),
         (re.compile(r"^res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)$"), "layer{0}.{1}.bn{2}.{3}"),
         (re.compile(r"^res(\d)\.(\d+)\.shortcut\.weight$"), "layer{0}.{1}.downsample.0.weight"),
         (re.compile(r"^res(\d)\.(\d+)\.shortcut\.norm\.(\w+)$"), "layer{0}.{1}.downsample.1.{2}")]
_HEADS = [(re.compile(r"^backbone\.fpn_lateral(\d)\.(weight|bias)$"),
           "backbone.fpn.inner_blocks.{0}.0.{1}"),
          (re.compile(r"^backbone\.fpn_output(\d)\.(weight|bias)$"),
           "backbone.fpn.layer_blocks.{0}.0.{1}"),
          (re.compile(r"^proposal_generator\.rpn_head\.conv\.(weight|bias)$"),
           "rpn.head.conv.0.0.{0}"),
          (re.compile(r"^proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)$"),
           "rpn.head.cls_logits.{0}"),
          (re.compile(r"^proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)$"),
           "rpn.head.bbox_pred.{0}"),
          (re.compile(r"^roi_heads\.box_head\.fc([12])\.(weight|bias)$"),
           "roi_heads.box_head.fc{0}.{1}"),
          (re.compile(r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$"),
           "roi_heads.box_predictor.{0}.{1}")]


def _body_key(name: str) -> str | None:
    """torchvision's ResNet name (``layer1.0.bn1.weight``) of a Detectron2 backbone name."""
    for pattern, target in _BODY:
        m = pattern.match(name)
        if m and "{" not in target:
            return m.expand(target)
        if m:
            groups = list(m.groups())
            groups[0] = str(int(groups[0]) - 1)  # res2 -> layer1
            return target.format(*groups)
    return None


def _head_key(name: str) -> str | None:
    """torchvision's name of a Detectron2 FPN / RPN / ROI-head name."""
    for pattern, target in _HEADS:
        m = pattern.match(name)
        if m:
            groups = list(m.groups())
            if name.startswith("backbone.fpn"):
                groups[0] = str(int(groups[0]) - 2)  # p2 -> 0
            if name.startswith("roi_heads.box_head"):
                groups[0] = str(int(groups[0]) + 5)  # fc1 -> fc6
            return target.format(*groups)
    return None


def torchvision_key(name: str, whole: bool) -> str | None:
    """kdlab's (torchvision's) state-dict name of a Detectron2 name; None if unknown."""
    if whole and name.startswith("backbone.bottom_up."):
        body = _body_key(name.removeprefix("backbone.bottom_up."))
        return None if body is None else "backbone.body." + body
    if not whole:
        body = _body_key(name)
        return None if body is None else "backbone.body." + body
    return _head_key(name)


def class_rows(k_file: int, k_net: int) -> list[int]:
    """For each of the file's K object classes, its label (row) in kdlab's predictor."""
    if k_file == k_net:
        return list(range(1, k_net + 1))
    if k_file == len(COCO_CATEGORY_IDS) and k_net == max(COCO_CATEGORY_IDS):
        return list(COCO_CATEGORY_IDS)
    raise UserError(f"The Detectron2 detector has {k_file} classes but kdlab's has {k_net}; "
                    "load it for data with the same classes (COCO: 80 -> 90 ids is mapped).")


def predictor_tensors(d2: dict[str, Tensor], k_net: int) -> dict[str, Tensor]:
    """Detectron2's ``cls_score`` / ``bbox_pred`` in torchvision's layout (see the module doc)."""
    w, b = d2["cls_score.weight"], d2["cls_score.bias"]
    rows = class_rows(w.shape[0] - 1, k_net)
    cls_w, cls_b = w.new_zeros((k_net + 1, w.shape[1])), b.new_full((k_net + 1,),
                                                                     ABSENT_CLASS_BIAS)
    cls_w[0], cls_b[0] = w[-1], b[-1]
    cls_w[rows], cls_b[rows] = w[:-1], b[:-1]
    bw, bb = d2["bbox_pred.weight"], d2["bbox_pred.bias"]
    if bw.shape[0] != 4 * (w.shape[0] - 1):
        raise UserError(f"The Detectron2 box predictor has {bw.shape[0]} deltas for "
                        f"{w.shape[0] - 1} classes; kdlab loads class-specific box regression "
                        "(ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG false) only.")
    box_w, box_b = bw.new_zeros((4 * (k_net + 1), bw.shape[1])), bb.new_zeros(4 * (k_net + 1))
    idx = torch.tensor([4 * r + j for r in rows for j in range(4)])
    box_w[idx], box_b[idx] = bw, bb
    return {"cls_score.weight": cls_w, "cls_score.bias": cls_b,
            "bbox_pred.weight": box_w, "bbox_pred.bias": box_b}


def _tensors(file: D2File, num_classes: int) -> dict[str, Tensor]:
    """The file's weights under torchvision's names (UserError on an unknown name)."""
    out: dict[str, Tensor] = {}
    predictor: dict[str, Tensor] = {}
    unknown = []
    whole = file.whole
    for name, value in sorted(file.weights.items()):
        if NOT_WEIGHTS.search(name) or (not whole and name.startswith("stem.fc.")):
            continue  # not weights / the ImageNet classifier
        key = torchvision_key(name, whole)
        tensor = torch.from_numpy(np.array(value))
        if key is None:
            unknown.append(name)
        elif key.startswith("roi_heads.box_predictor."):
            predictor[key.removeprefix("roi_heads.box_predictor.")] = tensor
        else:
            out[key] = tensor
    if unknown:
        raise UserError(f"{len(unknown)} tensor(s) of the Detectron2 file are not part of a "
                        f"ResNet-FPN Faster R-CNN ({', '.join(unknown[:3])}); kdlab loads "
                        "box-only Faster R-CNN R-FPN detectors and ResNet backbones.")
    if len(predictor) == 4:
        out.update({"roi_heads.box_predictor." + k: v
                    for k, v in predictor_tensors(predictor, num_classes).items()})
    return out


def _fill_frozen_bn(out: dict[str, Tensor], own: dict[str, Tensor]) -> None:
    """Running mean 0 and variance 1 for FrozenBatchNorm layers given only a scale and a bias
    (MSRA files; Detectron2's ``FrozenBatchNorm2d._load_from_state_dict``)."""
    for key in list(out):
        if key.endswith(".weight") and key.removesuffix("weight") + "running_var" in own:
            base = key.removesuffix("weight")
            out.setdefault(base + "running_mean", torch.zeros_like(own[base + "running_mean"]))
            out.setdefault(base + "running_var", torch.ones_like(own[base + "running_var"]))


def detectron2_state(path: Path, own: dict[str, Tensor], num_classes: int,
                     net: nn.Module | None = None) -> tuple[dict[str, Tensor], list[str]]:
    """``(tensors to load, names left fresh)`` for a detector whose state dict is ``own``.

    A whole detector must provide every tensor; a backbone file every tensor of
    ``backbone.body`` (the FPN and heads stay fresh and are returned as left fresh). A
    missing, unknown or mis-shaped tensor is a UserError naming the first few; so is an MSRA
    file for ``net`` (when given) whose bottlenecks downsample in the 3x3 convolution."""
    file = read_pkl(path)
    if file.author == "Caffe2" and net is not None:
        _check_msra_strides(net, path)
    out = _tensors(file, num_classes)
    _fill_frozen_bn(out, own)
    wanted = [k for k in own if file.whole or k.startswith("backbone.body.")]
    missing = [k for k in wanted if k not in out]
    extra = [k for k in out if k not in own]
    shapes = [f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in out
              if k in own and out[k].shape != own[k].shape]
    for problem, names in (("is missing", missing), ("has no place in the detector", extra),
                           ("has another shape (file vs detector)", shapes)):
        if names:
            raise UserError(
                f"{len(names)} tensor(s) {problem} when loading {path.name} "
                f"({'; '.join(names[:3])}); build the detector the file was trained as "
                "(depth, stride_in_1x1 for MSRA ResNets, fpn_channels, box_head_dim) - nothing "
                "was loaded.")
    state = {k: v.to(own[k].dtype) for k, v in out.items()}
    return state, [k for k in own if k not in state]


def _check_msra_strides(net: nn.Module, path: Path) -> None:
    """MSRA's bottlenecks downsample in their first 1x1 convolution: a torchvision-layout
    ResNet would compute another function with their weights."""
    if any(isinstance(m, Bottleneck) and m.conv2.stride != (1, 1) for m in net.modules()):
        raise UserError(f"{path.name} holds MSRA ResNet weights, whose blocks downsample in the "
                        "first 1x1 convolution; build the detector with the model option "
                        "stride_in_1x1: true.")


def load_detectron2_weights(net: nn.Module, path: str | Path) -> list[str]:
    """Load a Detectron2 ``.pkl`` into a torchvision Faster R-CNN FPN ``net`` (see the module
    doc); returns the names of the tensors left fresh (none for a whole detector). An MSRA
    (Caffe2) file needs the detector built with ``stride_in_1x1``."""
    own = net.state_dict()
    num_classes = int(own["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    state, fresh = detectron2_state(Path(path), own, num_classes, net)
    net.load_state_dict(state, strict=False)
    return fresh


__all__ = ["COCO_CATEGORY_IDS", "D2File", "caffe2_to_d2", "detectron2_state",
           "load_detectron2_weights", "read_pkl", "torchvision_key"]
