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
    """Build a registered model by name (an unknown name suggests close ones)."""
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, input_size=input_size)


import_submodules(__name__)

__all__ = ["MODELS", "Features", "StageInfo", "Staged", "build_model"]
