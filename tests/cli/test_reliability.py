"""Reliability: every mistake a user can make, and every fault of the machine we can inject,
ends with exit status 2 and one `kdlab: error:` line (no traceback, no stray files), or is
accepted by design; a run folder has one run at a time; killed runs resume exactly.

The cases go through the real entry point, ``kdlab.cli.main``, in this process (a fresh
process costs seconds for the torch import); only the kill tests start a child process.
``benchmarks/results/reliability.md`` lists the cases and what each gives.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from kdlab.cli import main
from kdlab.training.checkpoint import load_checkpoint
from kdlab.training.resume import check_resume
from kdlab.training.run_lock import LOCK_NAME, RunLock
from support.training import CE, KD, MODEL, registered

TESTS = Path(__file__).resolve().parents[1]
SRC = str(TESTS.parent / "src")


@pytest.fixture(autouse=True)
def _entries() -> Iterator[None]:
    with registered():
        yield


def tree(out: Path, **sections: dict) -> dict:
    """A run of 2 epochs x 2 steps of the tiny test model on the synthetic data."""
    t = {
        "data": {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64,
                 "train_subset": 64, "val_subset": 64},
        "model": {"student": MODEL},
        "method": {"name": CE},
        "optim": {"lr": 0.1},
        "schedule": {"name": "multistep", "epochs": 2, "milestones": [1]},
        # one thread, as the killed runs: another count sums convolutions in another order,
        # so weights would differ in the last bits whatever resume does
        "train": {"device": "cpu", "out_dir": str(out), "progress": "none", "threads": 1},
    }
    for key, value in sections.items():
        t[key] = {**t.get(key, {}), **value} if key != "method" else value
    return t


def write_recipe(folder: Path, name: str = "recipe.yaml", **sections: dict) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(tree(folder / "run", **sections)))
    return path


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


PLUGINS = "plugins"  # the folder of a case's plugin modules (see plugin_folder)


@contextlib.contextmanager
def plugin_folder(tmp: Path) -> Iterator[None]:
    """Plugin modules a case writes into ``tmp/plugins`` are importable while it runs (no
    bytecode files written) and forgotten afterwards, as in a new process."""
    folder = str(tmp / PLUGINS)
    sys.path.insert(0, folder)
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.path.remove(folder)
        sys.dont_write_bytecode = bytecode
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(folder):
                del sys.modules[name]


def one_error(capsys, argv: list[str]) -> str:
    """Run the CLI: exit 2, exactly one line on stderr, no traceback and no Python warning
    (which would print lines of its own); return that line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 2
    assert not [w for w in caught if issubclass(w.category, UserWarning)], [
        str(w.message) for w in caught]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdlab: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 1-epoch run (for the checkpoint cases and as a teacher)."""
    tmp = tmp_path_factory.mktemp("finished")
    with registered():
        path = write_recipe(tmp, schedule={"epochs": 1, "milestones": [1]})
        assert main(["train", str(path)]) == 0
    return tmp / "run"


# --------------------------------------------------------------------- the case table
def _recipe_bytes(data: bytes) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, finished: Path) -> list[str]:
        (tmp / "r.yaml").write_bytes(data)
        return ["train", str(tmp / "r.yaml")]
    return make


def _with_sets(*sets: str, **sections: dict) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, finished: Path) -> list[str]:
        argv = ["train", str(write_recipe(tmp, **sections))]
        for s in sets:
            argv += ["--set", s]
        return argv
    return make


def _kd_teacher(ckpt: Callable[[Path, Path], Path], *sets: str
                ) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, finished: Path) -> list[str]:
        path = write_recipe(tmp, method={"name": KD},
                            model={"teacher": MODEL,
                                   "teacher_checkpoint": str(ckpt(tmp, finished))})
        argv = ["distill", str(path)]
        for s in sets:
            argv += ["--set", s]
        return argv
    return make


def _bad_checkpoint(command: str, content: Callable[[Path], bytes] | None
                    ) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, finished: Path) -> list[str]:
        run = tmp / "broken"
        run.mkdir()
        if content is not None:
            (run / "best.pt").write_bytes(content(finished))
        return [command, str(run)]
    return make


def _pickle(finished: Path) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"obj": argparse.Namespace(a=1)}, buf)
    return buf.getvalue()


def _folder_as_teacher(tmp: Path, finished: Path) -> Path:
    return finished


def _corrupt_teacher(tmp: Path, finished: Path) -> Path:
    (tmp / "t.pt").write_bytes((finished / "best.pt").read_bytes()[:300])
    return tmp / "t.pt"


def _export_out(out: Callable[[Path], str]) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, finished: Path) -> list[str]:
        return ["export", str(finished), "--out", out(tmp)]
    return make


def _run_with_latin1_config(tmp: Path, finished: Path) -> list[str]:
    import shutil

    run = tmp / "copy"
    shutil.copytree(finished, run)
    (run / "config.yaml").write_bytes(b"\xff\xfe" + (run / "config.yaml").read_bytes())
    return ["eval", str(run)]


def _folder_out(tmp: Path) -> str:
    (tmp / "d.safetensors").mkdir()
    return str(tmp / "d.safetensors")


def _file_parent(tmp: Path) -> str:
    (tmp / "afile").write_text("x")
    return str(tmp / "afile" / "student.safetensors")


def _plain_pickle(finished: Path) -> bytes:
    """A checkpoint written with pickle itself (protocol 5), not torch.save."""
    return pickle.dumps({"obj": argparse.Namespace(a=1)}, protocol=5)


def _plugin(module: str, source: str) -> Callable[[Path, Path], list[str]]:
    def make(tmp: Path, finished: Path) -> list[str]:
        (tmp / PLUGINS).mkdir(exist_ok=True)
        (tmp / PLUGINS / f"{module}.py").write_text(source)
        return ["--import", module, "list", "methods"]
    return make


def _kd_recipe(tmp: Path, teacher: Path, name: str = "recipe.yaml", **data: object) -> Path:
    return write_recipe(tmp, name, method={"name": "kd"}, data=data,
                        model={"teacher": MODEL, "teacher_checkpoint": str(teacher)})


def _cache(tmp: Path, teacher: Path, name: str) -> Path:
    """A 2-view teacher cache of the recipe's synthetic data, built from ``teacher``."""
    from kdlab.core.config import load_config
    from kdlab.tools.teacher_cache import build_teacher_cache

    cfg = load_config(_kd_recipe(tmp, teacher, f"{name}.yaml"))
    path, _ = build_teacher_cache(cfg, views=2, out=tmp / f"{name}.kdcache", progress="none")
    (tmp / f"{name}.yaml").unlink()
    return path


def _edit_meta(path: Path, edit: Callable[[dict], None]) -> None:
    from kdlab.data.soft_labels import meta_path

    meta = json.loads(meta_path(path).read_text())
    edit(meta)
    meta_path(path).write_text(json.dumps(meta))


def _cached(tamper: Callable[[Path, Path, Path], None]) -> Callable[[Path, Path], list[str]]:
    """distill from a teacher cache of ``finished``'s teacher that ``tamper(cache, tmp,
    teacher)`` changed."""
    def make(tmp: Path, finished: Path) -> list[str]:
        path = _cache(tmp, finished / "best.pt", "cache")
        tamper(path, tmp, finished / "best.pt")
        recipe = _kd_recipe(tmp, finished / "best.pt", teacher_cache=str(path))
        return ["distill", str(recipe)]
    return make


def _more_views(path: Path, tmp: Path, teacher: Path) -> None:
    _edit_meta(path, lambda m: m.update(views=m["views"] * 8))


def _nan_tail(path: Path, tmp: Path, teacher: Path) -> None:
    size = path.stat().st_size
    tail = min(4096, size // 2)
    with open(path, "r+b") as f:
        f.seek(size - tail)
        f.write(b"\x00\x7e" * (tail // 2))  # fp16 NaN


def _resummed(path: Path) -> None:
    from kdlab.data.soft_labels import checksums

    _edit_meta(path, lambda m: m.update(checksum=checksums(path)))


def _permuted(path: Path, tmp: Path, teacher: Path) -> None:
    """Logits moved across classes (finite values), checksums written again to match."""
    import numpy as np

    from kdlab.data.soft_labels import TeacherCache, memmaps

    arrays = memmaps(path, TeacherCache.open(path).meta["arrays"], "r+")
    arrays["logits"][:] = np.roll(np.array(arrays["logits"]), 3, axis=-1)
    arrays["logits"].flush()
    _resummed(path)


def _other_weights(path: Path, tmp: Path, teacher: Path) -> None:
    """The outputs of other weights under this teacher's name and SHA-256."""
    import numpy as np

    from kdlab.data.soft_labels import TeacherCache, memmaps

    ckpt = torch.load(teacher, weights_only=True)
    g = torch.Generator().manual_seed(0)
    for name, value in ckpt["exported"]["student"].items():
        if value.is_floating_point() and "running" not in name:
            value.add_(0.5 * torch.randn(value.shape, generator=g))
    torch.save(ckpt, tmp / "other.pt")
    other = _cache(tmp, tmp / "other.pt", "other")
    mine = memmaps(path, TeacherCache.open(path).meta["arrays"], "r+")
    mine["logits"][:] = np.array(memmaps(other, TeacherCache.open(other).meta["arrays"],
                                         "r")["logits"])
    mine["logits"].flush()
    _resummed(path)
    for f in (other, other.with_name(other.name + ".json"), tmp / "other.pt"):
        f.unlink()


CASES: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    # recipes
    "recipe missing": (lambda t, f: ["train", str(t / "no.yaml")],
                       "does not exist"),
    "recipe is a folder": (lambda t, f: ["train", str(t)], "is a folder"),
    "recipe empty": (_recipe_bytes(b"# nothing\n"), "is empty"),
    "recipe not UTF-8": (_recipe_bytes("optim: {lr: 0.1}  # é\n".encode("latin-1")),
                         "not UTF-8"),
    "recipe binary": (_recipe_bytes(bytes(range(256))), "not UTF-8"),
    "recipe binary UTF-8": (_recipe_bytes(b"\x00\x01\x02data"), "binary"),
    "recipe invalid YAML": (_recipe_bytes(b"data: [unclosed\n"), "not valid YAML"),
    "recipe key twice": (_recipe_bytes(b"optim: {lr: 0.1}\ndata: {}\noptim: {lr: 0.2}\n"),
                         "given twice"),
    "recipe not a mapping": (_recipe_bytes(b"- a\n- b\n"), "must be a mapping"),
    # settings
    "unknown key": (_with_sets("optim.lrr=0.1"), "Did you mean 'lr'"),
    "unknown method": (_with_sets("method.name=_engine_cee"), "Did you mean"),
    "unknown dataset": (_with_sets("data.name=synthetik"), "Did you mean 'synthetic'"),
    "wrong type": (_with_sets("optim.lr=fast"), "optim.lr must be a number"),
    "lr NaN": (_with_sets("optim.lr=.nan"), "optim.lr must be a finite number"),
    "lr inf": (_with_sets("optim.lr=.inf"), "optim.lr must be a finite number"),
    "lr zero": (_with_sets("optim.lr=0"), "optim.lr must be greater than 0"),
    "negative gamma": (_with_sets("schedule.gamma=-1"), "schedule.gamma must be greater than 0"),
    "milestone after last epoch": (_with_sets("schedule.milestones=[1,5]"),
                                   "after the last epoch"),
    "warm-up as long as the run": (_with_sets("schedule.warmup_epochs=2"), "warmup_epochs"),
    "zero epochs": (_with_sets("schedule.epochs=0"), "schedule.epochs must be at least 1"),
    "negative weight decay": (_with_sets("optim.weight_decay=-1e-4"), "optim.weight_decay"),
    "momentum 1": (_with_sets("optim.momentum=1"), "optim.momentum must be in [0, 1)"),
    "batch size 0": (_with_sets("data.batch_size=0"), "data.batch_size must be at least 1"),
    "unknown amp": (_with_sets("train.amp=fp8"), "train.amp"),
    "unknown schedule": (_with_sets("schedule.name=linear"), "schedule.name"),
    "nesterov without momentum": (_with_sets("optim.nesterov=true", "optim.momentum=0"),
                                  "nesterov"),
    "temperature 0": (_kd_teacher(lambda t, f: f / "best.pt", "method.temperature=0"),
                      "method._engine_kd.temperature must be greater than 0"),
    "negative method weight": (_with_sets("method.weight=-1"),
                               "method._engine_ce.weight must be at least 0"),
    # teachers and checkpoints
    "teacher checkpoint is a folder": (_kd_teacher(_folder_as_teacher), "is a folder"),
    "teacher checkpoint missing": (_kd_teacher(lambda t, f: t / "none.pt"), "does not exist"),
    "teacher checkpoint truncated": (_kd_teacher(_corrupt_teacher), "cannot be read"),
    "checkpoint corrupt": (_bad_checkpoint("eval", lambda f: b"not a checkpoint" * 20),
                           "cannot be read (unknown data); it is truncated, corrupt"),
    "checkpoint truncated": (_bad_checkpoint(
        "eval", lambda f: (f / "best.pt").read_bytes()[:1000]), "cannot be read"),
    "checkpoint empty": (_bad_checkpoint("export", lambda f: b""), "cannot be read"),
    "checkpoint malicious pickle": (_bad_checkpoint("eval", _pickle),
                                    "not a kdlab or torchvision checkpoint"),
    "checkpoint plain pickle": (_bad_checkpoint("eval", _plain_pickle),
                                "not a kdlab or torchvision checkpoint"),
    "checkpoint missing": (_bad_checkpoint("eval", None), "no best.pt"),
    "run config.yaml not UTF-8": (_run_with_latin1_config, "config.yaml' is not UTF-8"),
    # data
    "missing data": (_with_sets("data.name=fashion_mnist", "data.root=/nonexistent/fm",
                                "data.download=false"), "data.root"),
    "batch larger than the data": (_with_sets("data.batch_size=100", "data.train_subset=64"),
                                   "data.batch_size"),
    # export destinations
    "export --out is a folder": (_export_out(_folder_out), "is a folder"),
    "export --out not .safetensors": (_export_out(lambda t: str(t / "x.bin")), ".safetensors"),
    "export --out under a file": (_export_out(_file_parent), "is not a folder"),
    # run folders
    "out_dir is a file": (lambda t, f: ["train", str(write_recipe(t)), "--out",
                                        str(t / "recipe.yaml")], "is a file"),
    "run folder holds a run": (lambda t, f: ["train", str(write_recipe(t)), "--out", str(f)],
                               "--resume"),
    "resume of nothing": (lambda t, f: ["train", str(write_recipe(t)), "--out",
                                        str(t / "nothing"), "--resume"], "Nothing to resume"),
    "resume with another lr": (lambda t, f: ["train", str(write_recipe(t)), "--out", str(f),
                                             "--resume", "--set", "optim.lr=0.2"],
                               "optim.lr 0.1 -> 0.2"),
    # plugins (issue 22)
    "plugin raises on import": (
        _plugin("kdlab_case_raises", "import os\n\nraise RuntimeError('no licence server')\n"),
        "kdlab_case_raises.py, line 3"),
    "plugin has a syntax error": (_plugin("kdlab_case_syntax", "def broken(:\n    pass\n"),
                                  "has a syntax error"),
    "plugin registers a taken method name": (
        _plugin("kdlab_case_method", "from kdlab.methods import METHODS\n"
                "from kdlab.methods.kd import KD\n\n\n@METHODS.register('kd')\n"
                "class Mine(KD):\n    pass\n"),
        "a name that kdlab.methods.kd.kd already registers"),
    "plugin registers a taken model name": (
        _plugin("kdlab_case_model", "from kdlab.models import MODELS\n\n\n"
                "@MODELS.register('resnet8')\ndef mine(**kw):\n    pass\n"),
        "registers model 'resnet8' in kdlab_case_model"),
    # teacher caches (issue 22)
    "teacher cache sidecar says more views than stored": (_cached(_more_views),
                                                          "does not describe its data"),
    "teacher cache last bytes overwritten (NaN)": (_cached(_nan_tail), "is damaged"),
    "teacher cache logits permuted (checksums rewritten)": (
        _cached(_permuted), "does not hold this teacher's outputs"),
    "teacher cache of other weights under this teacher's name": (
        _cached(_other_weights), "does not hold this teacher's outputs"),
    "teacher cache without checksum": (
        _cached(lambda path, tmp, t: _edit_meta(path, lambda m: m.pop("checksum"))),
        "has no checksum"),
    # sizes (issue 22)
    "a billion scenes": (_with_sets("data.name=scenes_seg", "task=segmentation",
                                    "data.scenes_train=1000000000"),
                         "lower data.scenes_train"),
    "a 100000-pixel canvas": (_with_sets("data.name=scenes_seg", "task=segmentation",
                                         "data.canvas=100000"), "lower data.canvas"),
    "cache-teacher --views 1e9": (lambda t, f: ["cache-teacher", str(_kd_recipe(t, f / "best.pt")),
                                                "--views", "1e9", "--out",
                                                str(t / "c.kdcache")], "use fewer views"),
    # smaller items (issue 22)
    "ignore_index for a classification run": (_with_sets("task_options.ignore_index=0"),
                                              "Unknown task_options ignore_index"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_case_gives_one_clear_line(case, tmp_path, finished, capsys):
    make, expected = CASES[case]
    argv = make(tmp_path, finished)
    before, before_run = files_under(tmp_path), files_under(finished)
    with plugin_folder(tmp_path):
        line = one_error(capsys, argv)
    assert expected in line, line
    assert files_under(tmp_path) == before  # nothing left behind
    assert files_under(finished) == before_run


def test_nan_loss_is_one_line_and_keeps_nothing_half_done(tmp_path, capsys):
    path = write_recipe(tmp_path, method={"name": CE, "nan_from_epoch": 1})
    line = one_error(capsys, ["train", str(path)])
    assert "NaN or infinite" in line and "keeps the last good epoch" in line
    run = tmp_path / "run"
    assert load_checkpoint(run / "last.pt")["epoch"] == 0
    assert not [p for p in run.iterdir() if p.name.endswith((".tmp", ".lock"))]


# --------------------------------------------------------------------- the Python API
def api_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """64 training and 64 validation images of the synthetic data (3x16x16 uint8)."""
    from kdlab.tasks.classification.datasets.synthetic import generate

    (xt, yt), (xv, yv) = generate()
    return (xt[:64], yt[:64]), (xv[:64], yv[:64])


def _api(**changes: object) -> Callable[[Path], None]:
    """kdlab.distill of a tiny student from a tiny teacher on ``api_data``, with ``changes``
    to its arguments (a callable value is called with the temporary folder)."""
    def call(tmp: Path) -> None:
        import kdlab
        from kdlab.models import build_model

        train, val = api_data()
        args: dict = {
            "student": build_model(MODEL, num_classes=10, in_channels=3, input_size=16),
            "teacher": build_model(MODEL, num_classes=10, in_channels=3, input_size=16),
            "train": train, "val": val, "method": "kd", "epochs": 1, "out": tmp / "run",
            "batch_size": 32, "device": "cpu", "progress": "none"}
        for key, value in changes.items():
            args[key] = value(tmp) if callable(value) else value
        kdlab.distill(**args)
    return call


def _under_a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("x")
    return tmp / "afile" / "run"


def _images(transform: Callable[[torch.Tensor], torch.Tensor], split: str = "val"
            ) -> Callable[[Path], tuple[torch.Tensor, torch.Tensor]]:
    def make(tmp: Path) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = api_data()[0 if split == "train" else 1]
        return transform(x), y
    return make


def _labels(transform: Callable[[torch.Tensor], torch.Tensor]
            ) -> Callable[[Path], tuple[torch.Tensor, torch.Tensor]]:
    def make(tmp: Path) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = api_data()[0]
        return x, transform(y)
    return make


def _same_network(tmp: Path) -> None:
    import kdlab
    from kdlab.models import build_model

    net = build_model(MODEL, num_classes=10, in_channels=3, input_size=16)
    train, val = api_data()
    kdlab.distill(student=net, teacher=net, train=train, val=val, epochs=1, out=tmp / "run",
                  device="cpu", progress="none")


API_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "out= under a regular file": (_api(out=_under_a_file), "which is a file, not a folder"),
    "out= is a file": (_api(out=lambda t: _under_a_file(t).parent), "is a file; choose a folder"),
    "val images with 3 channels, train with 1": (
        _api(train=_images(lambda x: x[:, :1], "train")), "give both splits images of one shape"),
    "val images 32x32, train 16x16": (
        _api(val=_images(lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2))),
        "val's images are 3x32x32"),
    "empty training tensors": (_api(train=lambda t: tuple(v[:0] for v in api_data()[0])),
                               "train holds no images"),
    "empty validation tensors": (_api(val=lambda t: tuple(v[:0] for v in api_data()[1])),
                                 "val holds no images"),
    "student=None": (_api(student=None), "student= must be a network"),
    "teacher=a number": (_api(teacher=42), "teacher= must be a network"),
    "student and teacher the same network": (_same_network, "the same network"),
    "a label beyond the class count": (_api(train=_labels(lambda y: y.clone().fill_(12))),
                                       "label 12 outside 0..9"),
    "a negative label": (_api(val=_labels(lambda y: y.clone().fill_(-1))), "label -1"),
    "float labels": (_api(train=_labels(lambda y: y.float())), "give integer class indices"),
    "float images on the 0..255 scale": (_api(train=_images(lambda x: x.float(), "train")),
                                         "looks like the 0..255 scale"),
    "int32 images": (_api(train=_images(lambda x: x.int(), "train")), "are int32 tensors"),
    "NaN images": (_api(val=_images(lambda x: x.float().div(255).fill_(float("nan")))),
                   "outside [0, 1]"),
    "images not (N, C, H, W)": (_api(train=_images(lambda x: x[:, 0, 0], "train")),
                                "needs images (N, C, H, W)"),
    "a DataLoader of dicts": (_api(train=lambda t: DataLoader([{"x": 1}] * 4)),
                              "must yield (images, labels) batches"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_case_gives_one_user_error(case, tmp_path, capsys):
    from kdlab.errors import UserError

    call, expected = API_CASES[case]
    before = files_under(tmp_path)
    with pytest.raises(UserError) as err:
        call(tmp_path)
    message = str(err.value)
    assert expected in message and "\n" not in message, message
    assert files_under(tmp_path) <= before | {"afile"}  # no run folder, nothing half-written


def test_api_out_on_a_read_only_file_system(tmp_path, small_fs):
    from kdlab.errors import UserError

    ro = small_fs("ro", "ro,size=64k")
    with pytest.raises(UserError, match="is on a read-only file system"):
        _api(out=ro / "run")(tmp_path)


# --------------------------------------------------------------------- accepted by design
def test_float_forms_in_recipes_and_overrides(tmp_path):
    from kdlab.core.config import load_config

    path = tmp_path / "r.yaml"
    path.write_text("optim: {lr: 1e-3, weight_decay: 5E-4}\nschedule: {gamma: .5}\n")
    cfg = load_config(path, ["data.batch_size=64"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.gamma) == (1e-3, 5e-4, 0.5)
    cfg = load_config(path, ["optim.lr=1e30", "optim.momentum=9e-1"])
    assert cfg.optim.lr == 1e30 and cfg.optim.momentum == 0.9


def test_a_recipe_from_a_pipe_or_standard_input(tmp_path, capsys, monkeypatch):
    import io

    text = yaml.safe_dump(tree(tmp_path / "piped", schedule={"epochs": 1, "milestones": [1]}))
    read, write = os.pipe()  # `kdlab train <(generate_recipe)` hands over /dev/fd/N
    os.write(write, text.encode())
    os.close(write)
    try:
        assert main(["train", f"/dev/fd/{read}"]) == 0
    finally:
        os.close(read)
    assert (tmp_path / "piped" / "last.pt").is_file()
    text = text.replace(str(tmp_path / "piped"), str(tmp_path / "stdin"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    assert main(["train", "-"]) == 0  # `generate_recipe | kdlab train -`
    assert (tmp_path / "stdin" / "last.pt").is_file()


def test_unwritten_milestones_follow_the_epochs_written(tmp_path, capsys):
    path = tmp_path / "minimal.yaml"
    base = tree(tmp_path / "run")
    path.write_text(yaml.safe_dump({**{k: base[k] for k in ("data", "model", "method", "train")},
                                    "schedule": {"epochs": 1}}))
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("schedule.milestones [1]: not given, so the default [150, 180, 210] of "
                     "240 epochs scaled to schedule.epochs=1") == 1, out
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["schedule"]
    assert (saved["epochs"], saved["milestones"]) == (1, [1])
    # resumed with more epochs: the run's own milestones, not ones scaled to the new length
    assert main(["train", str(path), "--resume", "--set", "schedule.epochs=8"]) == 0
    assert "schedule.milestones [1]: not given, so those of the run being resumed" in (
        capsys.readouterr().out)
    # milestones the user writes stay checked
    assert "after the last epoch" in one_error(capsys, ["train", str(path), "--out",
                                                        str(tmp_path / "r2"), "--set",
                                                        "schedule.milestones=[5]"])


def test_out_of_memory_names_the_setting_that_drove_it(tmp_path, capsys, monkeypatch):
    import kdlab.training.trainer as trainer_mod

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 900.00 GiB")

    monkeypatch.setattr(trainer_mod, "build_run", oom)
    scenes = tree(tmp_path / "run", data={"name": "scenes_seg", "canvas": 128},
                  model={"student": "seg_resnet8"}, method={"name": "ce"})
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump({**scenes, "task": "segmentation"}))
    line = one_error(capsys, ["train", str(tmp_path / "seg.yaml")])
    assert "Out of memory" in line and "lower data.canvas (now 128, default 64)" in line, line
    import kdlab.training.build as build_mod

    monkeypatch.setattr(build_mod, "build_teacher", oom)  # imported by build_teacher_cache
    finished = tmp_path / "teacher.pt"
    finished.write_bytes(b"")  # only its existence is checked before the teacher is built
    line = one_error(capsys, ["cache-teacher", str(_kd_recipe(tmp_path, finished, "kd.yaml")),
                              "--views", "2", "--out", str(tmp_path / "c.kdcache")])
    assert "lower --views" in line, line


def test_export_into_a_new_folder_creates_it(finished, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "student.safetensors"
    assert main(["export", str(finished), "--out", str(out)]) == 0
    assert out.is_file()


# --------------------------------------------------------------------- resume rules
def test_resume_may_grow_epochs_and_says_so(tmp_path, capsys):
    path = write_recipe(tmp_path, schedule={"epochs": 1, "milestones": [1]})
    assert main(["train", str(path)]) == 0
    run = tmp_path / "run"
    saved = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", str(path), "--resume", "--set", "train.progress=lines",
                 "--set", "optim.lr=0.1"]) == 0  # lr as saved: no change
    assert (run / "config.yaml").read_text() == saved
    assert main(["train", str(path), "--resume", "--set", "schedule.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "resume: schedule.epochs 1 -> 2" in out and out.count("done:") == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["schedule"]["epochs"] == 2


def test_resume_refuses_a_cosine_horizon_and_lists_every_difference(finished, tmp_path,
                                                                     capsys):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(finished, run)
    saved = (run / "config.yaml").read_bytes()
    path = write_recipe(tmp_path, schedule={"name": "cosine", "epochs": 3})
    line = one_error(capsys, ["train", str(path), "--resume", "--set", "method.weight=2"])
    for change in ("schedule.name 'multistep' -> 'cosine'", "schedule.epochs 1 -> 3",
                   "method.weight 1.0 -> 2"):
        assert change in line, line
    assert (run / "config.yaml").read_bytes() == saved


def test_resume_with_another_world_size(finished, monkeypatch):
    import kdlab.training.resume as resume
    from kdlab.core.config import RunConfig, build_dataclass

    cfg = build_dataclass(RunConfig, yaml.safe_load((finished / "config.yaml").read_text()),
                          where="config")
    assert check_resume(cfg, finished) == []
    monkeypatch.setattr(resume, "_current_world_size", lambda: 2)
    with pytest.raises(Exception, match=r"1 process\(es\) x data.batch_size 32.*batch_size=16"):
        check_resume(cfg, finished)
    cfg.data.batch_size = 16  # the same global batch: allowed, with a note
    notes = check_resume(cfg, finished)
    assert any("1 -> 2 process(es)" in n for n in notes)


# --------------------------------------------------------------------- the run folder
def test_a_second_run_into_a_held_folder_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path)
    run = tmp_path / "run"
    with RunLock(run):
        (run / "config.yaml").write_text("the holder's\n")  # a live run without a checkpoint
        line = one_error(capsys, ["train", str(path)])
        assert "in use by another kdlab run" in line and f"pid {os.getpid()}" in line
        assert files_under(run) == {LOCK_NAME, "config.yaml"}  # the refused run removed nothing
    assert files_under(run) == {"config.yaml"}


def test_a_failed_start_removes_only_the_folder_it_made(tmp_path, capsys, monkeypatch):
    import kdlab.training.trainer as trainer_mod

    def fails(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", fails)
    path = write_recipe(tmp_path)
    one_error(capsys, ["train", str(path)])
    assert not (tmp_path / "run").exists()  # made by this run, no checkpoint: removed
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    one_error(capsys, ["train", str(path)])
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"notes.txt"}  # not made by it


def test_stale_lock_and_temporaries_are_cleared_and_modes_follow_the_umask(tmp_path, capsys):
    path = write_recipe(tmp_path, schedule={"epochs": 1, "milestones": [1]})
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).write_text("pid 999999 on a-dead-host\n")  # no process holds it
    old = os.umask(0o027)
    try:
        assert main(["train", str(path)]) == 0
        (run / ".last.pt.0badf00d.tmp").write_bytes(b"half a checkpoint")
        assert main(["train", str(path), "--resume", "--set", "schedule.epochs=2"]) == 0
    finally:
        os.umask(old)
    names = {p.name for p in run.iterdir()}
    assert not [n for n in names if n.endswith(".tmp")] and LOCK_NAME not in names
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.csv", "report.md"):
        assert (run / name).stat().st_mode & 0o777 == 0o640, name


def test_out_of_memory_gives_the_batch_size_hint(tmp_path, capsys, monkeypatch):
    import kdlab.training.trainer as trainer_mod

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", oom)
    line = one_error(capsys, ["train", str(write_recipe(tmp_path))])
    assert "Out of memory" in line and "data.batch_size" in line
    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch",
                        lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    assert "data.batch_size" in one_error(capsys, ["train", str(write_recipe(tmp_path))])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import kdlab.training.trainer as trainer_mod

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", bug)
    with pytest.raises(ZeroDivisionError):
        main(["train", str(write_recipe(tmp_path))])


# --------------------------------------------------------------------- a small file system
@pytest.fixture
def small_fs(tmp_path) -> Iterator[Callable[..., Path]]:
    """Mount tmpfs file systems (root only); skipped where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        target = tmp_path / name
        target.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or 'not root'})")
        mounted.append(target)
        return target

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], capture_output=True)


def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, small_fs, capsys):
    disk = small_fs("disk", "size=160k")  # room for epoch 1's files, not for epoch 2's
    path = write_recipe(tmp_path, train={"out_dir": str(disk / "run")})
    line = one_error(capsys, ["train", str(path)])
    assert "No space left" in line and "the last good checkpoint is epoch 1" in line
    run = disk / "run"
    assert load_checkpoint(run / "last.pt")["epoch"] == 0
    assert not [p for p in run.rglob("*.tmp")] and not (run / LOCK_NAME).exists()
    subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)  # space freed
    assert main(["train", str(path), "--resume"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_read_only_run_folder_and_export(finished, tmp_path, small_fs, capsys):
    ro = small_fs("ro", "ro,size=64k")
    path = write_recipe(tmp_path)
    assert "read-only" in one_error(capsys, ["train", str(path), "--out", str(ro / "run")])
    assert "read-only" in one_error(capsys, ["export", str(finished), "--out",
                                             str(ro / "s.safetensors")])


# --------------------------------------------------------------------- kill -9 and resume
CHILD = """
import json, os, signal, sys
sys.path[:0] = [{tests!r}, {src!r}]
from support.training import registered
from kdlab.cli import main
import kdlab.runtime.files as io
import kdlab.training.trainer as trainer_mod


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def inject(point):
    if point == "mid_epoch":
        real = trainer_mod.Trainer._train_epoch
        def train_epoch(self, epoch, *a, **k):
            if epoch == 1:
                die()
            return real(self, epoch, *a, **k)
        trainer_mod.Trainer._train_epoch = train_epoch
        return
    real_replace = os.replace
    class OS:
        def __getattr__(self, name):
            return getattr(os, name)
        def replace(self, src, dst):
            if str(dst).endswith("last.pt") and os.path.exists(dst):  # epoch 2's write
                if point == "mid_write":
                    with open(src, "r+b") as f:
                        f.truncate(os.path.getsize(src) // 2)
                die()
            real_replace(src, dst)
    io.os = OS()


def run_in_fork(recipe, point=None, stderr=None):
    pid = os.fork()
    if pid == 0:
        if stderr is not None:
            os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT, 0o644), 2)
        if point is not None:
            inject(point)
        with registered():
            os._exit(main(["train", recipe]))
    return pid


def ended(pid):
    _, code = os.waitpid(pid, 0)
    return os.WTERMSIG(code) if os.WIFSIGNALED(code) else -os.WEXITSTATUS(code)


# torch is imported once; each run is a fork of this process
recipes, concurrent = json.loads(sys.argv[1]), json.loads(sys.argv[2])
status = {{point: ended(run_in_fork(recipe, point)) for point, recipe in recipes.items()}}
# two runs started into one folder at the same time
pids = [run_in_fork(concurrent["recipe"], stderr=err) for err in concurrent["stderr"]]
status["concurrent"] = [ended(pid) for pid in pids]
print(json.dumps(status))
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("straight")
    with registered():
        assert main(["train", str(write_recipe(tmp))]) == 0
    return load_checkpoint(tmp / "run" / "last.pt")


POINTS = ("mid_epoch", "mid_write", "before_rename")


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict:
    """A run killed at each point: {point: (its recipe, the signal that ended it)}, and
    "concurrent": (recipe, [exit statuses], [stderr files]) of two runs started together."""
    recipes = {point: str(write_recipe(tmp_path_factory.mktemp(point))) for point in POINTS}
    both = tmp_path_factory.mktemp("concurrent")
    concurrent = {"recipe": str(write_recipe(both)),
                  "stderr": [str(both / f"stderr{i}.txt") for i in range(2)]}
    code = CHILD.format(tests=str(TESTS), src=SRC)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(recipes),
                          json.dumps(concurrent)], env=env, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout.strip().splitlines()[-1])
    out = {point: (Path(recipes[point]), status[point]) for point in POINTS}
    out["concurrent"] = (Path(concurrent["recipe"]), [-c for c in status["concurrent"]],
                         [Path(p) for p in concurrent["stderr"]])
    return out


def test_two_runs_started_into_one_folder_at_once(killed, straight):
    path, codes, stderr = killed["concurrent"]
    assert sorted(codes) == [0, 2]
    loser = stderr[codes.index(2)].read_text().strip().splitlines()
    assert len(loser) == 1, loser
    assert "in use by another kdlab run" in loser[0] or "already holds a run" in loser[0]
    run = path.parent / "run"
    done = load_checkpoint(run / "last.pt")  # the winner's run, whole
    for key, value in straight["distiller"].items():
        assert torch.equal(value, done["distiller"][key]), key
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_then_resume_gives_the_uninterrupted_weights(point, killed, straight):
    path, ended_by = killed[point]
    assert ended_by == signal.SIGKILL
    run = path.parent / "run"
    assert load_checkpoint(run / "last.pt")["epoch"] == 0
    left = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert bool(left) == (point != "mid_epoch")  # the kill left a temporary behind
    assert (run / LOCK_NAME).exists()  # and its lock file, held by no one now
    assert main(["train", str(path), "--resume"]) == 0
    done = load_checkpoint(run / "last.pt")
    assert done["epoch"] == 1
    for key, value in straight["distiller"].items():
        assert torch.equal(value, done["distiller"][key]), key
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------- torchrun
TORCHRUN_SCRIPT = """
import os, signal, sys
sys.path[:0] = [{tests!r}, {src!r}]
from support.training import registered
from kdlab.cli import main
import kdlab.training.trainer as trainer_mod

real = trainer_mod.Trainer._train_epoch
def train_epoch(self, epoch, *a, **k):
    if epoch == 1 and os.environ["RANK"] == "1" and os.environ.get("KILL_RANK_1") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, epoch, *a, **k)
trainer_mod.Trainer._train_epoch = train_epoch
with registered():
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_torchrun_rank_killed_then_resumed(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(TESTS), src=SRC))
    path = write_recipe(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)

    def torchrun(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(script), "train", str(path), *args],
            cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=180)

    killed = torchrun(KILL_RANK_1="1")
    assert killed.returncode != 0
    survivor = [line for line in killed.stderr.splitlines() if line.startswith("kdlab: error:")]
    assert len(survivor) == 1 and "rank 0 of 2" in survivor[0] and "--resume" in survivor[0]
    assert "rank      : 1" in killed.stderr  # torchrun names the rank that failed first
    resumed = torchrun("--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.count("done:") == 1  # from rank 0 only
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------- failures by kind
@pytest.mark.parametrize("error,expected", [
    (PermissionError(13, "Permission denied", "/srv/runs/a"), "Permission denied for"),
    (OSError(30, "Read-only file system", "/mnt/ro/run"), "read-only file system"),
    (FileNotFoundError(2, "No such file or directory", "/no/such/x"), "does not exist"),
    (FileExistsError(17, "File exists", "/tmp/afile"), "exists and is not a folder"),
    (NotADirectoryError(20, "Not a directory", "/tmp/afile/x"), "is a file, not a folder"),
    (IsADirectoryError(21, "Is a directory", "/tmp/d"), "is a folder"),
    (OSError(28, "No space left on device", "/nowhere/x.safetensors"),
     "No space left on the device (or quota) while writing '/nowhere/x.safetensors'; free"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"),
     "lower data.batch_size"),
])
def test_machine_failures_are_described_by_kind(error, expected):
    from kdlab.cli.commands.failures import describe

    message = describe(error)
    assert message is not None and expected in message, message


def test_bugs_and_unknown_errors_are_not_described(monkeypatch):
    from kdlab.cli.commands.failures import describe

    monkeypatch.delenv("RANK", raising=False)
    for error in (ZeroDivisionError(), KeyError("x"), RuntimeError("shape mismatch"),
                  OSError(5, "Input/output error"), RuntimeError("Connection closed by peer")):
        assert describe(error) is None, error
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    message = describe(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234"))
    assert message is not None and "rank 1 of 2" in message and "--resume" in message

