"""Model registry: every entry builds a :class:`~kdlab.models.staged.Staged` network.

A builder takes ``num_classes``, ``in_channels`` and ``input_size`` keyword arguments (and
``pretrained`` when it has pretrained weights) and returns a ``Staged`` view whose ``net`` is
the ordinary model.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from kdlab.autoimport import import_submodules
from kdlab.errors import UserError
from kdlab.models.staged import Features, Staged, StageInfo
from kdlab.registry import Registry

MODELS: Registry = Registry("model")
_SHAPE_ARGS = {"num_classes", "in_channels", "input_size", "pretrained"}


def pretrained_models(task: str | None = None) -> list[str]:
    """The registered models that can start from pretrained weights (their builder takes a
    ``pretrained`` argument: torchvision's ImageNet networks, the detectors), of ``task``
    only when it is given."""
    return [name for name in MODELS
            if "pretrained" in inspect.signature(MODELS.get(name)).parameters
            and (task is None or model_task(name) == task)]


def model_task(name: str) -> str:
    """The task a registered model is built for: its builder's ``task`` attribute
    (``"segmentation"``, ``"detection"``), ``"classification"`` when it has none."""
    return str(getattr(MODELS.get(name), "task", "classification"))


def build_model(
    name: str, *, num_classes: int, in_channels: int = 3, input_size: int = 32,
    pretrained: bool | str = False, options: Mapping[str, Any] | None = None,
) -> Staged:
    """Build a registered model by name (an unknown name suggests close ones).

    ``pretrained``: ``True`` for torchvision's ImageNet weights (a download), or the path of a
    local copy; only the models of :func:`pretrained_models` have them. ``options``: further
    keyword arguments of the builder that change the architecture (a segmentation network's
    ``aux``).

    The result and its ``net`` carry ``kdlab_spec`` (model name, num_classes, in_channels,
    input_size, and ``options`` when given), which run checkpoints record so that exports and
    ``kdlab eval`` can rebuild the plain model.
    """
    builder = MODELS.get(name)
    options = dict(options or {})
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(options) - (set(accepted) - _SHAPE_ARGS))
    if unknown:
        raise UserError(f"Model {name!r} takes no option {unknown[0]!r}; its options are "
                        f"{', '.join(sorted(set(accepted) - _SHAPE_ARGS)) or 'none'}.")
    spec_options = dict(options)
    if pretrained:
        if name not in pretrained_models():
            raise UserError(f"Model {name!r} has no pretrained weights; the models that have "
                            f"them are {', '.join(pretrained_models(model_task(name)))}.")
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


import_submodules(__name__)

__all__ = ["MODELS", "Features", "StageInfo", "Staged", "build_model", "model_task",
           "pretrained_models"]
