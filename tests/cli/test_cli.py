"""The command line: user errors end with one `kdlab: error:` line and exit 2 (never a
traceback, never a partial file); train -> distill -> eval -> export round trip on the
synthetic dataset; exported safetensors load into the plain model with identical outputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdlab.cli import main
from support.cli import SRC, error_of, files_under, kdlab, recipe


# --------------------------------------------------------------- the real entry point
def test_list_through_the_entry_point():
    for kind, expected in (("methods", ("ce", "kd")), ("models", ("resnet8", "resnet20")),
                           ("datasets", ("fashion_mnist", "synthetic"))):
        res = kdlab("list", kind)
        assert res.returncode == 0, res.stderr
        lines = dict(line.split(None, 1) for line in res.stdout.splitlines() if " " in line)
        for name in expected:
            assert name in lines and lines[name].strip(), f"{kind}: {name} lacks a description"


HELP = (["--help"], ["train", "--help"], ["distill", "--help"], ["eval", "--help"],
        ["export", "--help"], ["list", "--help"], ["bench", "--help"], ["quickstart", "--help"],
        ["compare", "--help"], ["analyze", "--help"], ["analyze", "anisotropy", "--help"],
        ["analyze", "probe", "--help"], ["cache-teacher", "--help"], ["list", "models"],
        ["list", "methods"], ["list", "datasets"], ["list", "tasks"])


def test_help_and_list_do_not_import_torch():
    """`kdlab --help`, every command's help and `kdlab list` answer without torch (seconds
    and hundreds of MB otherwise): `list` reads kdlab.cli.commands.catalogue."""
    code = ("import sys\nfrom kdlab.cli import main\n"
            f"codes = [main(argv) for argv in {HELP!r}]\n"
            "print(codes, sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"{[0] * len(HELP)} []", res.stdout[-500:]


def test_the_catalogue_lists_what_the_registries_hold():
    """kdlab.cli.commands.catalogue is what `python -m kdlab.cli.commands.listing` writes now."""
    from kdlab.cli.commands import listing

    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", "from kdlab.cli.commands.listing import "
                          "catalogue_source; print(catalogue_source(), end='')"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    written = (Path(listing.__file__).with_name("catalogue.py")).read_text()
    assert written == res.stdout, "run `python -m kdlab.cli.commands.listing` to rewrite it"


def test_user_errors_through_the_entry_point(tmp_path):
    path = recipe(tmp_path, method={"name": "kdd"})
    res = kdlab("train", str(path))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("kdlab: error:")
    assert "Did you mean 'kd'" in res.stderr
    misuse = kdlab("train")  # argparse misuse: also exit 2 and one error line, no traceback
    assert misuse.returncode == 2 and "Traceback" not in misuse.stderr
    # argparse names the subcommand: "kdlab train: error: ... RECIPE"
    assert re.match(r"kdlab( \w+)?: error: .*RECIPE", misuse.stderr.strip().splitlines()[-1])


# --------------------------------------------------------------- user errors in-process
def test_unknown_names_and_keys_suggest_close_ones(tmp_path, capsys):
    path = str(recipe(tmp_path))
    assert "Did you mean 'resnet8'" in error_of(capsys, "train", path,
                                                "--set", "model.student=resnet9")
    assert "Did you mean 'lr'" in error_of(capsys, "train", path, "--set", "optim.lrr=0.1")
    assert "Did you mean 'synthetic'" in error_of(capsys, "train", path,
                                                  "--set", "data.name=synthetik")
    assert not (tmp_path / "runs").exists()


def test_missing_and_broken_recipes(tmp_path, capsys):
    assert "does not exist" in error_of(capsys, "train", str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert "not valid YAML" in error_of(capsys, "train", str(bad))


def test_train_refuses_a_teacher_method_and_distill_needs_the_teacher(tmp_path, capsys):
    kd = recipe(tmp_path, "kd.yaml", method={"name": "kd"},
                model={"teacher": "resnet20",
                       "teacher_checkpoint": str(tmp_path / "missing" / "best.pt")})
    assert "kdlab distill" in error_of(capsys, "train", str(kd))
    out = tmp_path / "student_run"
    msg = error_of(capsys, "distill", str(kd), "--out", str(out))
    assert "does not exist" in msg and "teacher" in msg
    assert not out.exists()  # nothing is left behind
    no_teacher = recipe(tmp_path, "kd2.yaml", method={"name": "kd"})
    assert "model.teacher" in error_of(capsys, "distill", str(no_teacher))
    assert "kdlab train" in error_of(capsys, "distill", str(recipe(tmp_path)))


def test_corrupt_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"this is not a checkpoint" * 10)
    before = files_under(tmp_path)
    assert "corrupt" in error_of(capsys, "eval", str(run))
    assert "corrupt" in error_of(capsys, "export", str(run / "best.pt"))
    assert "no last.pt" in error_of(capsys, "export", str(run), "--which", "last")
    assert "does not exist" in error_of(capsys, "eval", str(tmp_path / "nowhere"))
    assert files_under(tmp_path) == before  # no partial export


# --------------------------------------------------------------- the round trip
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ce teacher and a kd student, each 1 epoch of 2 steps on synthetic data."""
    tmp = tmp_path_factory.mktemp("cli")
    teacher = recipe(tmp, "teacher.yaml", model={"student": "resnet20"})
    assert main(["train", str(teacher), "--out", str(tmp / "teacher")]) == 0
    assert (tmp / "teacher" / "best.pt").is_file() and (tmp / "teacher" / "config.yaml").is_file()
    student = recipe(tmp, "student.yaml", method={"name": "kd"},
                     model={"teacher": "resnet20",
                            "teacher_checkpoint": str(tmp / "teacher" / "best.pt")})
    assert main(["distill", str(student), "--out", str(tmp / "student")]) == 0
    return tmp


def test_eval_prints_top1_and_top5(trained, capsys):
    capsys.readouterr()
    assert main(["eval", str(trained / "student"), "--which", "last"]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out
    row = next(line for line in out.splitlines() if line.startswith("student "))
    top1, top5 = (float(v) for v in row.split()[2:4])
    assert 0 <= top1 <= top5 <= 100


def test_export_loads_into_the_plain_model_with_identical_outputs(trained, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from kdlab.cli.commands.common import load_run_checkpoint
    from kdlab.data import describe
    from kdlab.models import build_model

    target = trained / "export" / "resnet8.safetensors"
    assert main(["export", str(trained / "student"), "--out", str(target)]) == 0
    with safe_open(str(target), "pt") as f:
        meta = f.metadata()
    info = describe("synthetic")
    assert meta["model"] == "resnet8" and int(meta["num_classes"]) == info.num_classes
    assert int(meta["in_channels"]) == info.in_channels and meta["kdlab_version"]

    def plain():
        return build_model(meta["model"], num_classes=int(meta["num_classes"]),
                           in_channels=int(meta["in_channels"]),
                           input_size=int(meta["input_size"])).net.eval()

    exported = plain()
    exported.load_state_dict(load_file(str(target)))  # strict: every key, every shape
    reference = plain()
    reference.load_state_dict(load_run_checkpoint(trained / "student" / "best.pt")
                              ["exported"]["student"])
    x = torch.randn(4, info.in_channels, info.input_size, info.input_size)
    with torch.no_grad():
        assert torch.equal(exported(x), reference(x))
    assert files_under(trained / "export") == {"resnet8.safetensors"}  # no temp files left


def test_teacher_class_mismatch(trained, capsys):
    """A teacher trained for other classes is refused with one clear line."""
    from safetensors.torch import save_file

    from kdlab.data import describe
    from kdlab.models import build_model

    info = describe("synthetic")
    wrong = build_model("resnet20", num_classes=info.num_classes + 3,
                        in_channels=info.in_channels, input_size=info.input_size)
    path = trained / "wrong_teacher.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.net.state_dict().items()}, str(path),
              metadata={"model": "resnet20", "num_classes": str(info.num_classes + 3),
                        "in_channels": str(info.in_channels),
                        "input_size": str(info.input_size)})
    student = recipe(trained, "mismatch.yaml", method={"name": "kd"},
                     model={"teacher": "resnet20", "teacher_checkpoint": str(path)})
    out = trained / "mismatch_run"
    msg = error_of(capsys, "distill", str(student), "--out", str(out))
    assert "class" in msg
    assert not out.exists()


def test_quickstart_runs_and_reuses_finished_runs(tmp_path, capsys):
    args = ["quickstart", "--out", str(tmp_path / "qs"), "--dataset", "synthetic",
            "--epochs", "1", "--max-steps-per-epoch", "2", "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    for row in ("teacher resnet20", "student resnet8 alone", "student resnet8 + KD",
                "student resnet8 + FCFD", "Gains over the student alone",
                "measured for the default settings only"):
        assert row in first
    assert "kdlab distill recipes/" in first
    assert (tmp_path / "qs" / "quickstart.png").stat().st_size > 0
    assert main(args) == 0  # the same settings again: nothing is retrained
    second = capsys.readouterr().out
    assert second.count("reusing the finished run") == 4
    assert main([*args, "--lr", "0.02"]) == 0  # other settings: each run starts afresh
    assert capsys.readouterr().out.count("starting it afresh") == 4


def test_plain_export_is_marked_and_load_exported_gives_the_plain_model(trained, capsys):
    from kdlab.export import load_exported, read_exported
    from kdlab.models import build_model

    target = trained / "export_plain" / "kd.safetensors"
    assert main(["export", str(trained / "student"), "--out", str(target)]) == 0
    state, meta = read_exported(target)
    assert meta["kind"] == "model" and meta["name"] == "student"
    net = load_exported(target)
    assert type(net) is type(build_model("resnet8", num_classes=10, in_channels=3,
                                          input_size=16).net)
    x = torch.randn(2, 3, 16, 16)
    reference = build_model(meta["model"], num_classes=int(meta["num_classes"]),
                            in_channels=int(meta["in_channels"]),
                            input_size=int(meta["input_size"])).net.eval()
    reference.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))


def test_eval_and_export_do_not_need_the_teacher_checkpoint(trained, tmp_path, capsys):
    """A distilled run is rebuilt from its own checkpoint: the teacher file may be gone."""
    import shutil

    run = tmp_path / "moved_student"
    shutil.copytree(trained / "student", run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["teacher_checkpoint"] = str(tmp_path / "deleted" / "best.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["eval", str(run), "--which", "last"]) == 0
    assert "student " in capsys.readouterr().out
    assert main(["export", str(run), "--which", "last"]) == 0
    assert (run / "student.safetensors").is_file()


def test_a_reader_that_leaves_early_is_not_an_error():
    """`kdlab list models | head -1`: a closed pipe ends quietly with status 0."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "kdlab", "list", "models"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 0 and "Traceback" not in err
