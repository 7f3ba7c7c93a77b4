"""The public surface that the layout of issue 24 must not move: the names the README and the
docs give (kdlab.distill / kdlab.train, the registries, the staging and data helpers, the
export loader, UserError), the plugin entry-point group and the version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_the_documented_imports_resolve():
    from kdlab.core.plugins import ENTRY_POINT_GROUP
    from kdlab.data.augment import CropFlip
    from kdlab.data.base import DATASETS, DatasetInfo
    from kdlab.data.loaders import TensorSource
    from kdlab.errors import UserError
    from kdlab.export import load_exported, read_exported
    from kdlab.methods import METHODS, build_distiller
    from kdlab.methods.base import Distiller
    from kdlab.methods.shared.logits import kd_loss
    from kdlab.models import MODELS, build_model, stage
    from kdlab.models.staged import Features, Staged, StageInfo
    from kdlab.tools.export import load_exported as tools_load_exported

    assert ENTRY_POINT_GROUP == "kdlab.plugins"  # installed plugins keep their entry points
    assert load_exported is tools_load_exported and callable(read_exported)
    assert issubclass(UserError, Exception) and isinstance(CropFlip(pad=2, flip=True), CropFlip)
    assert "fashion_mnist" in DATASETS and DatasetInfo and TensorSource
    assert "fcfd" in METHODS and issubclass(METHODS.get("fcfd"), Distiller)
    assert "resnet8" in MODELS and callable(build_model) and callable(stage)
    assert callable(build_distiller) and callable(kd_loss) and Features and Staged and StageInfo


def test_kdlab_train_stays_the_function_once_the_training_package_is_imported():
    """The training core is ``kdlab.training``, not ``kdlab.train``: importing a subpackage
    sets it as an attribute of ``kdlab``, which would hide the lazy ``kdlab.train``."""
    import kdlab.training.trainer  # noqa: F401

    assert callable(kdlab.train) and callable(kdlab.distill)
    assert kdlab.__version__ == kdlab.core.version.__version__


def test_importing_kdlab_alone_stays_light():
    code = "import sys, kdlab; kdlab.__version__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": SRC}, check=True).stdout
    assert out.strip() == "False"
