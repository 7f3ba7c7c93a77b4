"""Plugins: a method written outside the package runs through `kdlab --import ... train`,
`eval`, `export` and `--resume` (the run records the module and each command imports it
again); a missing plugin is one clear error; entry points of group kdlab.plugins are loaded."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest
import yaml

from kdlab.cli import main
from kdlab.core import plugins
from kdlab.methods import METHODS
from kdlab.models import MODELS

PLUGIN = "kdlab_test_plugin_methods"
SOURCE = '''
"""A user's method and model, registered from outside kdlab."""
from dataclasses import dataclass

import torch.nn.functional as F

from kdlab.methods import METHODS
from kdlab.methods.base import Distiller
from kdlab.models import MODELS, build_model


@METHODS.register("plugin_ce")
class PluginCE(Distiller):
    """Label smoothing CE, a user's method."""

    needs_teacher = False

    @dataclass
    class Config:
        smoothing: float = 0.1

    def forward(self, images, targets, index=None):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, targets,
                                              label_smoothing=self.cfg.smoothing)}


@MODELS.register("plugin_net")
def plugin_net(*, num_classes, in_channels=3, input_size=32):
    """resnet8 under the user's own name."""
    return build_model("resnet8", num_classes=num_classes, in_channels=in_channels,
                       input_size=input_size)
'''


def _forget() -> None:
    """As if in a new process: the plugin is neither imported nor registered."""
    sys.modules.pop(PLUGIN, None)
    METHODS._entries.pop("plugin_ce", None)
    MODELS._entries.pop("plugin_net", None)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(textwrap.dedent(SOURCE))
    monkeypatch.syspath_prepend(str(folder))
    _forget()
    yield folder
    _forget()


def _recipe(tmp_path, epochs: int = 1):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"name": "synthetic", "batch_size": 16, "eval_batch_size": 64,
                 "val_subset": 64},
        "model": {"student": "plugin_net"}, "method": {"name": "plugin_ce", "smoothing": 0.2},
        "schedule": {"name": "constant", "epochs": epochs},
        "train": {"device": "cpu", "max_steps_per_epoch": 2, "progress": "none"}}))
    return path


def test_a_plugin_method_trains_evaluates_exports_and_resumes(plugin_dir, tmp_path, capsys):
    run = tmp_path / "run"
    recipe = _recipe(tmp_path)
    assert main(["train", str(recipe), "--out", str(run)]) == 2
    assert "Unknown method 'plugin_ce'" in capsys.readouterr().err
    assert main(["--import", PLUGIN, "train", str(recipe), "--out", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == [PLUGIN]
    _forget()
    assert main(["eval", str(run)]) == 0
    _forget()
    assert main(["export", str(run), "--out", str(tmp_path / "s.safetensors")]) == 0
    _forget()  # --resume without --import: the run's config brings the plugin back
    assert main(["train", str(recipe), "--out", str(run), "--resume",
                 "--set", "schedule.epochs=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == [PLUGIN]

    (plugin_dir / f"{PLUGIN}.py").unlink()
    _forget()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"Plugin module {PLUGIN!r}" in err
    assert "install it or add its folder to PYTHONPATH" in err


def test_a_recipe_can_list_its_plugins(plugin_dir, tmp_path):
    recipe = _recipe(tmp_path)
    tree = yaml.safe_load(recipe.read_text())
    recipe.write_text(yaml.safe_dump({**tree, "plugins": [PLUGIN]}))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 0
    assert "plugin_ce" in METHODS


def test_unknown_import_is_one_line(capsys):
    assert main(["--import", "no_such_kdlab_plugin", "list", "methods"]) == 2
    err = capsys.readouterr().err
    assert "Plugin module 'no_such_kdlab_plugin' (from --import) cannot be imported" in err


def test_entry_point_plugins_are_loaded_and_recorded(plugin_dir, monkeypatch, capsys):
    ep = importlib.metadata.EntryPoint(name="mine", value=PLUGIN, group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "_entry_points", lambda: [ep])
    assert main(["list", "methods"]) == 0
    assert "plugin_ce" in capsys.readouterr().out
    assert plugins.startup([]) == [PLUGIN]
    broken = importlib.metadata.EntryPoint(name="mine", value=f"{PLUGIN}:nothing",
                                           group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "_entry_points", lambda: [broken])
    assert main(["list", "methods"]) == 2
    assert "which does not exist" in capsys.readouterr().err


DATA_PLUGIN = "kdlab_test_plugin_data"
DATA_SOURCE = '''
"""A user's dataset as the 'bring your own data' guide writes it."""
import torch

from kdlab.data.augment import CropFlip
from kdlab.data.base import DATASETS, DatasetInfo
from kdlab.data.loaders import TensorSource


@DATASETS.register("plugin_data")
class PluginData(TensorSource):
    """Random 3x16x16 images, 4 classes."""

    info = DatasetInfo(name="plugin_data", num_classes=4, in_channels=3, input_size=16,
                       train_size=64, val_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    augmentation = CropFlip(pad=2, flip=True)

    def load(self, cfg):
        x_train, y_train = torch.load(f"{cfg.root}/train.pt", weights_only=True)
        x_val, y_val = torch.load(f"{cfg.root}/val.pt", weights_only=True)
        return (x_train, y_train), (x_val, y_val)
'''


def test_a_plugin_dataset_trains(tmp_path, monkeypatch):
    import torch

    from kdlab.data import DATASETS

    (tmp_path / f"{DATA_PLUGIN}.py").write_text(textwrap.dedent(DATA_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 64), ("val", 32)):
        images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
        torch.save((images, torch.arange(n) % 4), tmp_path / f"{split}.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"name": "plugin_data", "root": str(tmp_path), "batch_size": 16},
        "model": {"student": "resnet8"}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"device": "cpu", "max_steps_per_epoch": 2, "progress": "none"}}))
    try:
        assert main(["--import", DATA_PLUGIN, "train", str(recipe), "--out",
                     str(tmp_path / "run")]) == 0
    finally:
        sys.modules.pop(DATA_PLUGIN, None)
        DATASETS._entries.pop("plugin_data", None)


# --------------------------------------------------------------- plugins that fail to load
BROKEN = {
    "raises": ("import os\n\nraise RuntimeError('no licence server')\n", 3,
               "failed while loading (RuntimeError: no licence server)"),
    "syntax": ("def broken(:\n    pass\n", 1, "has a syntax error"),
    "method_taken": ("from kdlab.methods import METHODS\nfrom kdlab.methods.kd import KD\n\n\n"
                     "@METHODS.register('kd')\nclass MyKD(KD):\n    pass\n", 5,
                     "registers method 'kd' in kdlab_test_broken_method_taken"),
    "model_taken": ("from kdlab.models import MODELS\n\n\n@MODELS.register('resnet8')\n"
                    "def mine(**kw):\n    pass\n", 4,
                    "registers model 'resnet8' in kdlab_test_broken_model_taken"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_a_plugin_that_fails_to_load_is_one_line_with_its_file_and_line(kind, tmp_path,
                                                                       monkeypatch, capsys):
    source, line, expected = BROKEN[kind]
    module = f"kdlab_test_broken_{kind}"
    path = tmp_path / f"{module}.py"
    path.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {name: list(reg.names()) for name, reg in (("m", METHODS), ("n", MODELS))}
    try:
        assert main(["--import", module, "list", "methods"]) == 2
    finally:
        sys.modules.pop(module, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"Plugin module {module!r} (from --import)" in err and expected in err, err
    assert f"{path}, line {line}" in err, err
    if kind.endswith("taken"):  # both claimants named; the registry is unchanged
        assert ("already registers" in err and
                ("kdlab.methods.kd" in err or "kdlab.models.cifar" in err)), err
    assert before == {name: list(reg.names()) for name, reg in (("m", METHODS), ("n", MODELS))}
