"""Model registry: every entry builds a :class:`~kdlab.models.staged.view.Staged` network.

A builder takes ``num_classes``, ``in_channels`` and ``input_size`` keyword arguments (and
``pretrained`` when it has pretrained weights) and returns a ``Staged`` view whose ``net`` is
the ordinary model.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from kdlab.core.registry import Registry
from kdlab.errors import UserError
from kdlab.models.staged.view import Features, Staged, StageInfo

#: filled by kdlab.models (CIFAR zoo, torchvision, timm) and kdlab.tasks (each task's networks)
MODELS: Registry = Registry("model", filled_by=("kdlab.models", "kdlab.tasks"))
_SHAPE_ARGS = {"num_classes", "in_channels", "input_size", "pretrained"}


def pretrained_models(task: str | None = None) -> list[str]:
    """The registered models that can start from pretrained weights (their builder takes a
    ``pretrained`` argument: torchvision's ImageNet networks, the detectors), of ``task``
    only when it is given."""
    return [name for name in MODELS
            if "pretrained" in inspect.signature(MODELS.get(name)).parameters
            and (task is None or model_task(name) == task)]


def has_pretrained(name: str) -> bool:
    """Whether model ``name`` (registered, or ``timm/<name>``) can start from pretrained
    weights: its builder takes a ``pretrained`` argument."""
    return "pretrained" in inspect.signature(MODELS.get(name)).parameters


def model_task(name: str) -> str:
    """The task a registered model is built for: its builder's ``task`` attribute
    (``"segmentation"``, ``"detection"``), ``"classification"`` when it has none."""
    return str(getattr(MODELS.get(name), "task", "classification"))


def build_model(
    name: str | nn.Module, *, num_classes: int | None = None, in_channels: int = 3,
    input_size: int = 32, pretrained: bool | str = False,
    options: Mapping[str, Any] | None = None,
) -> Staged:
    """Build a registered model by name (an unknown name suggests close ones), or stage a
    network given as a module.

    ``name``: a registered model, ``timm/<any timm model>`` (the ``[timm]`` extra), or an
    existing network: a :class:`Staged` view is returned as it is, a timm or torchvision ResNet
    module is staged by :func:`~kdlab.models.staged.staging.auto_stage`; stage any other network
    with :func:`stage`. ``num_classes`` is needed for a name (a module's is read from it).

    ``pretrained``: ``True`` for torchvision's ImageNet weights (a download), or the path of a
    local copy; only the models of :func:`pretrained_models` have them. ``options``: further
    keyword arguments of the builder that change the architecture (a segmentation network's
    ``aux``).

    The result and its ``net`` carry ``kdlab_spec`` (model name, num_classes, in_channels,
    input_size, and ``options`` when given), which run checkpoints record so that exports and
    ``kdlab eval`` can rebuild the plain model.
    """
    if isinstance(name, nn.Module):
        if pretrained:
            raise UserError("pretrained is for a model given by name; load the weights into "
                            "your network before passing it.")
        return auto_stage(name, (in_channels, input_size, input_size))
    if num_classes is None:
        raise UserError(f"build_model({name!r}) needs num_classes.")
    builder = MODELS.get(name)
    options = dict(options or {})
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(options) - (set(accepted) - _SHAPE_ARGS))
    if unknown:
        raise UserError(f"Model {name!r} takes no option {unknown[0]!r}; its options are "
                        f"{', '.join(sorted(set(accepted) - _SHAPE_ARGS)) or 'none'}.")
    spec_options = dict(options)
    if pretrained:
        if not has_pretrained(name):
            task = model_task(name)
            timm = " and timm/<name>" if task == "classification" else ""
            raise UserError(f"Model {name!r} has no pretrained weights; the models that have "
                            f"them are {', '.join(pretrained_models(task))}{timm}.")
        options["pretrained"] = pretrained
    staged = builder(
        num_classes=num_classes, in_channels=in_channels, input_size=input_size, **options
    )
    spec = {"model": name, "num_classes": num_classes, "in_channels": in_channels,
            "input_size": input_size}
    if spec_options:
        spec["options"] = spec_options
    staged.kdlab_spec = spec
    staged.net.kdlab_spec = spec
    return staged


from kdlab.models.staged.staging import auto_stage, stage  # noqa: E402 - needs MODELS above

__all__ = ["MODELS", "Features", "StageInfo", "Staged", "auto_stage", "build_model",
           "has_pretrained", "model_task", "pretrained_models", "stage"]
