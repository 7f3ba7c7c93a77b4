"""Import every module of a package so that its registry decorators run."""

from __future__ import annotations

import importlib
import pkgutil


def import_package(package_name: str) -> None:
    """Import ``package_name`` and all modules and subpackages below it (registration side
    effects)."""
    package = importlib.import_module(package_name)
    for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
        importlib.import_module(info.name)
