"""Any timm network (Wightman, PyTorch Image Models) as a teacher or student: ``timm/<name>``.

Install the optional extra (``pip install 'kdlab[timm]'``); then ``model.student:
timm/resnet18`` (or ``timm/convnext_atto``, ``timm/efficientnet_b0``, ...) builds
``timm.create_model(name, num_classes=..., in_chans=...)`` with random weights and sees it
through :class:`~kdlab.models.staged.view.Staged` using timm's own feature metadata: no timm model
is rewritten or registered one by one.

How a timm network is staged:

- **CNN families** (ResNet, EfficientNet, MobileNetV3, ConvNeXt, RegNet, ...): the stages end
  at the modules of the network's ``feature_info`` (what ``features_only=True`` returns);
  stage ``i`` runs, in order, the children of the network after the end of stage ``i - 1``
  up to that module (an ``nn.Sequential`` that holds feature modules is opened one level, as
  timm's own feature extractor does). Stage 0 holds the stem (the zoo's convention). The
  children between the last stage and the head (e.g. EfficientNet's ``conv_head`` + ``bn2``)
  run before pooling; the pooled embedding is timm's ``forward_head(x, pre_logits=True)`` and
  the classifier is ``get_classifier()``. ``features()`` then equals the plain forward and
  ``run_from`` continues from any stage.
- **Networks whose forward is not a sequence of their children** (ViT, DeiT, Swin, ...: the
  position embedding and class token are added in code, not by a module): the view has
  **zero stages**; its embedding is ``forward_head(forward_features(x), pre_logits=True)``.
  Methods that need only logits or pooled embeddings (KD, DKD, DML, CRD, CC, RKD, CE) work;
  a method that distils intermediate feature maps refuses such a network with one sentence.

Which of the two applies is decided by one check at build time: the staged pass must
reproduce the network's own ``forward_features`` and ``forward`` on a random input.

Weights come from a local file only (``pretrained: /path/to/model.safetensors``, loaded with
timm's ``pretrained_cfg_overlay=dict(file=...)``): kdlab never downloads at run time. A
classifier for another class count stays freshly initialised (timm drops it), a different
input channel count adapts the first convolution (timm sums / repeats its weights).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.core.registry import did_you_mean
from kdlab.errors import UserError
from kdlab.models import MODELS
from kdlab.models.staged.view import Staged

PREFIX = "timm/"


def _timm():  # noqa: ANN202 - the timm module
    try:
        import timm
    except ImportError:
        raise UserError("timm models need the timm package; install it with "
                        "`pip install 'kdlab[timm]'`.") from None
    return timm


class _TimmHead:
    """The pooled embedding of a timm network: ``net.forward_head(x, pre_logits=True)``.

    A plain callable (not a module, so it adds nothing to the state_dict); it refers to the
    network it belongs to, so a deep copy of the staged view follows the copied network."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        #: weights the pooling uses that no named part of the view holds (e.g. ConvNeXt's
        #: head norm, MobileNetV3's conv_head); set by stage_timm. A method that copies the
        #: head out of the network (SimKD) cannot take them along and refuses the network.
        self.outside: list[str] = []

    def __call__(self, x: Tensor) -> Tensor:
        return self.net.forward_head(x, pre_logits=True)


class _TimmBody(_TimmHead):
    """The whole feature pass and pooling of a network that has no stages (e.g. a ViT)."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)


def _ordered_children(module: nn.Module, prefix: str, keep: set[str]) -> list[str] | None:
    """Dotted names of the modules ``module``'s forward runs in order, opening every
    ``nn.Sequential`` child that holds one of the names in ``keep``; None when a name in
    ``keep`` lies inside a child that is not a Sequential (its forward is code, not order)."""
    names: list[str] = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        inside = [k for k in keep if k.startswith(full + ".")]
        if not inside:
            names.append(full)
        elif isinstance(child, nn.Sequential):
            sub = _ordered_children(child, full + ".", keep)
            if sub is None:
                return None
            names.extend(sub)
        else:
            return None
    return names


def _module_name(net: nn.Module, target: nn.Module) -> str:
    for name, module in net.named_modules():
        if module is target and name:
            return name
    raise UserError(f"{type(net).__name__}.get_classifier() is not one of its modules; stage "
                    "it by hand with kdlab.models.stage(net, stages=[...], head=[...]).")


def _matches(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _staged_cnn(net: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
                classifier: str) -> Staged | None:
    """The view whose stages end at ``feature_info``'s modules, or None if no such view
    reproduces the network's forward."""
    info = getattr(net, "feature_info", None)
    try:
        ends = [str(f["module"]) for f in info] if info else []
    except (TypeError, KeyError):
        return None
    order = _ordered_children(net, "", set(ends)) if ends else None
    if not order or any(e not in order for e in ends):
        return None
    cuts = [order.index(e) for e in ends]
    if cuts != sorted(cuts):
        return None
    starts = [0, *(c + 1 for c in cuts[:-1])]
    stages = [order[a:b + 1] for a, b in zip(starts, cuts, strict=True)]
    rest = order[cuts[-1] + 1:]
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    called: list[str] = []  # the children after the last stage that forward_features runs
    hooks = [net.get_submodule(n).register_forward_hook(
        lambda *_, n=n: called.append(n) if n not in called else None) for n in rest]
    try:
        with torch.no_grad():
            want = net.forward_features(x.clone())
            for h in hooks:
                h.remove()
            pre_pool = [n for n in called if n in rest]
            y = x.clone()
            for n in [*(n for names in stages for n in names), *pre_pool]:
                y = net.get_submodule(n)(y)
    except Exception:  # noqa: BLE001 - the children are not the forward: no stages
        return None
    finally:
        for h in hooks:
            h.remove()
    if not _matches(y, want):
        return None
    return Staged(net, stem=[], stages=stages, classifier=[classifier], pre_pool=pre_pool,
                  pool=_TimmHead(net), input_shape=input_shape, num_classes=num_classes)


def stage_timm(net: nn.Module, *, input_shape: tuple[int, int, int],
               num_classes: int) -> Staged:
    """The staged view of a timm network (see the module docstring): stages at
    ``feature_info``'s modules where that reproduces the forward, else no stages."""
    for attr in ("forward_features", "forward_head", "get_classifier"):
        if not callable(getattr(net, attr, None)):
            raise UserError(f"{type(net).__name__} is not a timm network (it has no {attr}()); "
                            "stage it with kdlab.models.stage(net, stages=[...], head=[...]).")
    classifier = _module_name(net, net.get_classifier())
    was_training = net.training
    net.eval()
    try:
        staged = _staged_cnn(net, input_shape, num_classes, classifier)
        if staged is None:
            staged = Staged(net, stem=[], stages=[], classifier=[classifier],
                            pool=_TimmBody(net), input_shape=input_shape,
                            num_classes=num_classes)
        named = [*staged.stem_names, *(n for s in staged.stage_names for n in s),
                 *staged.pre_pool_names, *staged.classifier_names]
        staged._pool.outside = [k for k, _ in [*net.named_parameters(), *net.named_buffers()]
                                if not any(k.startswith(n + ".") for n in named)]
        x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            if not _matches(staged(x.clone()), net(x.clone())):
                raise UserError(f"The staged view of timm's {type(net).__name__} does not "
                                "reproduce its forward; stage it by hand with "
                                "kdlab.models.stage(net, stages=[...], head=[...]).")
    finally:
        net.train(was_training)
    return staged


def _create(name: str, num_classes: int, in_channels: int, input_size: int,
            pretrained: bool | str) -> nn.Module:
    timm = _timm()
    options: dict[str, object] = {"num_classes": num_classes, "in_chans": in_channels}
    if pretrained is True:
        raise UserError(f"timm/{name}: kdlab does not download weights at run time; set "
                        "model.*_pretrained to the path of the model's local .safetensors or "
                        ".pth file.")
    if pretrained:
        path = Path(str(pretrained)).expanduser()
        if not path.is_file():
            raise UserError(f"The pretrained weights file {path} for timm/{name} does not "
                            "exist; pass the path of the model's .safetensors or .pth file.")
        options.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    # Transformers take the input size (their position embeddings depend on it); CNNs do not.
    for extra in ({"img_size": input_size}, {}):
        try:
            net = timm.create_model(name, **extra, **options)
            break
        except TypeError as err:
            if not extra or "img_size" not in str(err):
                raise
        except (RuntimeError, OSError, ValueError) as err:
            if not pretrained:
                raise
            raise UserError(f"timm/{name} could not load {pretrained} ({err}); pass a "
                            f"checkpoint of timm's {name}.") from None
    if pretrained:
        cfg_classes = (getattr(net, "pretrained_cfg", None) or {}).get("num_classes")
        head = _module_name(net, net.get_classifier())
        net.kdlab_pretrained_skipped = (
            [k for k in net.state_dict() if k.startswith(head + ".")]
            if cfg_classes is not None and int(cfg_classes) != num_classes else [])
    return net


@functools.cache
def timm_builder(name: str) -> Callable[..., Staged]:
    """The model-registry builder of ``timm/<name>`` (an unknown name suggests close ones)."""
    timm = _timm()
    if not timm.is_model(name):
        known = timm.list_models()
        raise UserError(f"Unknown timm model {name!r}.{did_you_mean(name, known)} "
                        "See timm.list_models() for the names.")

    def build(*, num_classes: int, in_channels: int = 3, input_size: int = 224,
              pretrained: bool | str = False) -> Staged:
        net = _create(name, num_classes, in_channels, input_size, pretrained)
        return stage_timm(net, input_shape=(in_channels, input_size, input_size),
                          num_classes=num_classes)

    build.weights_from_file_only = True  # checked with the run's config, before any data
    build.__name__ = f"{PREFIX}{name}"
    build.__doc__ = f"timm {name}, staged at its feature_info modules."
    return build


MODELS.register_prefix(PREFIX, timm_builder)
