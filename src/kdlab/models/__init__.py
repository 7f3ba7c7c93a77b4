"""Model registry: every entry builds a :class:`~kdlab.models.staged.Staged` network.

A builder takes ``num_classes``, ``in_channels`` and ``input_size`` keyword arguments and
returns a ``Staged`` view whose ``net`` is the ordinary model.
"""

from __future__ import annotations

from kdlab.autoimport import import_submodules
from kdlab.models.staged import Features, Staged, StageInfo
from kdlab.registry import Registry

MODELS: Registry = Registry("model")


def build_model(
    name: str, *, num_classes: int, in_channels: int = 3, input_size: int = 32
) -> Staged:
    """Build a registered model by name (an unknown name suggests close ones).

    The result and its ``net`` carry ``kdlab_spec`` (model name, num_classes, in_channels,
    input_size), which run checkpoints record so that exports and ``kdlab eval`` can rebuild
    the plain model.
    """
    staged = MODELS.get(name)(
        num_classes=num_classes, in_channels=in_channels, input_size=input_size
    )
    spec = {"model": name, "num_classes": num_classes, "in_channels": in_channels,
            "input_size": input_size}
    staged.kdlab_spec = spec
    staged.net.kdlab_spec = spec
    return staged


import_submodules(__name__)

__all__ = ["MODELS", "Features", "StageInfo", "Staged", "build_model"]
