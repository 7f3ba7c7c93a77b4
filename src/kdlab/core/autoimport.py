"""Import every module of a package so that its registry decorators run."""

from __future__ import annotations

import importlib
import pkgutil
import sys


def import_submodules(package_name: str) -> None:
    """Import all modules and subpackages below ``package_name`` (registration side effects)."""
    package = sys.modules[package_name]
    for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
        importlib.import_module(info.name)
