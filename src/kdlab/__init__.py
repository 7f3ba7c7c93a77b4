"""kdlab: knowledge distillation for vision models, built around FCFD.

Function-Consistent Feature Distillation (Liu et al., ICLR 2023) and the methods it is
compared with, on one training loop. See the README for the command line, and
:func:`kdlab.distill` / :func:`kdlab.train` for networks and data held in Python.
"""

from typing import Any

from kdlab.core.version import __version__

__all__ = ["__version__", "distill", "train"]


def __getattr__(name: str) -> Any:
    """``kdlab.distill`` and ``kdlab.train`` (:mod:`kdlab.api`), imported on first use so that
    ``import kdlab`` stays light."""
    if name in ("distill", "train"):
        from kdlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
