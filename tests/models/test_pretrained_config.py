"""`model.teacher_pretrained` / `model.student_pretrained` in a recipe: torchvision's ImageNet
weights (a download, replaced here by a local stand-in) or a local state dict file.

A teacher comes from exactly one of teacher_checkpoint / teacher_pretrained; only the models of
`pretrained_models()` take pretrained weights; a pretrained teacher must be pretrained
throughout; `kdlab eval` / `kdlab export` rebuild a finished run without reading or
downloading any pretrained weights (the run's own checkpoint is loaded strictly afterwards).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
import yaml

from kdlab.cli import main
from kdlab.core.config import load_config
from kdlab.errors import UserError
from kdlab.models import build_model, pretrained_models
from kdlab.tasks.classification.datasets.synthetic import Synthetic
from kdlab.training.build import build_distiller_from_config, check_model_config
from support.cli import error_of, recipe

INFO = Synthetic.info  # 10 classes, 3 x 16 x 16


def torchvision_resnet18(num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision resnet18 with its own (seeded) random weights and
    non-trivial BatchNorm statistics: a stand-in for torchvision's pretrained file."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net.state_dict()


@pytest.fixture
def resnet18_file(tmp_path) -> Path:
    """A local .pth of a 10-class resnet18: it fits the synthetic data exactly."""
    path = tmp_path / "resnet18-local.pth"
    torch.save(torchvision_resnet18(10, seed=3), path)
    return path


def kd_config(**model):
    """A kd run on the synthetic data: resnet8 student, resnet18 teacher (+ ``model`` keys)."""
    sets = [f"model.{k}={v}" for k, v in {"student": "resnet8", "teacher": "resnet18",
                                          **model}.items()]
    return load_config(None, ["data.name=synthetic", "method.name=kd", *sets])


def offline(monkeypatch) -> list[str]:
    """Make every torchvision weights download fail; returns the URLs that were asked for."""
    import torchvision.models._api as api

    asked: list[str] = []

    def fail(url, *args, **kwargs):
        asked.append(url)
        raise URLError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", fail)
    return asked


# --------------------------------------------------------------------- the config keys
def test_the_keys_take_true_or_a_path_and_nothing_else():
    assert load_config(None).model.teacher_pretrained is False
    assert load_config(None).model.student_pretrained is False
    cfg = load_config(None, ["model.teacher_pretrained=true",
                             "model.student_pretrained=/weights/resnet18.pth"])
    assert cfg.model.teacher_pretrained is True
    assert cfg.model.student_pretrained == "/weights/resnet18.pth"
    for bad in ("3", "[a.pth]", "{x: 1}"):
        with pytest.raises(UserError, match=r"model\.teacher_pretrained must be true or false "
                                            r"or a string, got"):
            load_config(None, [f"model.teacher_pretrained={bad}"])


def test_only_torchvision_networks_take_pretrained_weights(resnet18_file):
    assert pretrained_models("classification") == ["mobilenet_v2", "resnet18", "resnet34",
                                                   "resnet50"]
    names = "mobilenet_v2, resnet18, resnet34, resnet50"
    with pytest.raises(UserError, match=f"'resnet8' has no pretrained weights; use one of "
                                        f"{names} or set model.student_pretrained=false"):
        check_model_config(kd_config(teacher_pretrained=resnet18_file, student_pretrained="true"))
    cfg = load_config(None, ["method.name=kd", "model.teacher=resnet20",
                             "model.teacher_pretrained=true"])
    with pytest.raises(UserError, match=f"model.teacher 'resnet20' has no pretrained weights; "
                                        f"use one of {names}"):
        check_model_config(cfg)
    with pytest.raises(UserError, match=f"the models that have them are {names}"):
        build_model("mobilenet_v1", num_classes=10, pretrained=True)


def test_a_teacher_comes_from_exactly_one_place(resnet18_file):
    with pytest.raises(UserError, match="model.teacher_checkpoint and model.teacher_pretrained "
                                        "are both set; keep one"):
        check_model_config(kd_config(teacher_checkpoint=resnet18_file,
                                     teacher_pretrained=resnet18_file))
    with pytest.raises(UserError, match="neither model.teacher_checkpoint nor "
                                        "model.teacher_pretrained is"):
        check_model_config(kd_config())
    check_model_config(kd_config(teacher_pretrained=resnet18_file))
    # a method without a teacher ignores the teacher keys, as before
    check_model_config(load_config(None, ["model.teacher=resnet8",
                                          "model.teacher_pretrained=true"]))


def test_both_or_neither_is_one_error_line_from_the_cli(tmp_path, capsys, resnet18_file):
    both = recipe(tmp_path, "both.yaml", method={"name": "kd"},
                  model={"teacher": "resnet18", "teacher_checkpoint": str(resnet18_file),
                         "teacher_pretrained": True})
    assert "both set" in error_of(capsys, "distill", str(both))
    neither = recipe(tmp_path, "neither.yaml", method={"name": "kd"},
                     model={"teacher": "resnet18"})
    assert "teacher_pretrained=true" in error_of(capsys, "distill", str(neither))
    cifar = recipe(tmp_path, "cifar.yaml", model={"student_pretrained": True})
    assert "has no pretrained weights" in error_of(capsys, "train", str(cifar))
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------- loading
def test_a_pretrained_teacher_from_a_local_file_has_the_files_weights(resnet18_file, monkeypatch):
    asked = offline(monkeypatch)
    torch.manual_seed(0)
    teacher = build_distiller_from_config(kd_config(teacher_pretrained=resnet18_file),
                                          INFO).teacher
    want = torch.load(resnet18_file, weights_only=True)
    got = teacher.net.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    torch.manual_seed(0)
    fresh = build_distiller_from_config(kd_config(teacher_checkpoint=None,
                                                  teacher_pretrained=resnet18_file),
                                        INFO, architecture_only=True).teacher.net.state_dict()
    assert not torch.equal(fresh["conv1.weight"], want["conv1.weight"])  # the file did it
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert asked == []


def test_a_teacher_the_file_does_not_cover_is_refused(tmp_path):
    """torchvision's ImageNet weights (1000 classes) on 10-class data: the head would be random."""
    path = tmp_path / "imagenet_resnet18.pth"
    torch.save(torchvision_resnet18(1000, seed=4), path)
    with pytest.raises(UserError, match=r"leaves 2 teacher tensor\(s\) untrained \(fc.weight, "
                                        r"fc.bias\).*10 classes"):
        build_distiller_from_config(kd_config(teacher_pretrained=path), INFO)


def test_a_pretrained_student_keeps_a_fresh_head_for_other_classes(tmp_path, resnet18_file):
    path = tmp_path / "imagenet_resnet18.pth"
    want = torchvision_resnet18(1000, seed=4)
    torch.save(want, path)
    cfg = kd_config(student="resnet18", student_pretrained=path,
                    teacher_pretrained=resnet18_file)
    got = build_distiller_from_config(cfg, INFO).student.net.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("fc."))
    assert got["fc.weight"].shape == (10, 512)


def test_pretrained_true_downloads_torchvisions_original_weights(monkeypatch):
    """The KD papers' ImageNet teachers are torchvision's IMAGENET1K_V1 networks (ResNet-34
    73.3, ResNet-50 76.1 top-1), not the newer, stronger IMAGENET1K_V2 ResNet-50."""
    asked = offline(monkeypatch)
    for name in ("resnet34", "resnet50"):
        with pytest.raises(UserError, match="could not be downloaded"):
            build_model(name, num_classes=1000, input_size=224, pretrained=True)
    assert asked == [torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url,
                     torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]


def test_a_failed_download_is_one_error_line_with_exit_2(tmp_path, capsys, monkeypatch):
    offline(monkeypatch)
    path = recipe(tmp_path, method={"name": "kd"},
                  model={"teacher": "resnet18", "teacher_pretrained": True})
    out = tmp_path / "run"
    msg = error_of(capsys, "distill", str(path), "--out", str(out))
    assert "The pretrained resnet18 weights could not be downloaded" in msg
    assert "pretrained='/path/to/resnet18-" in msg
    assert not out.exists()


# --------------------------------------------------------------------- a finished run
@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    """A kd run whose teacher and student both start from `pretrained: true` (the download
    answered by a local state dict), 1 epoch of 2 steps."""
    tmp = tmp_path_factory.mktemp("pretrained")
    state = torchvision_resnet18(10, seed=5)
    with pytest.MonkeyPatch.context() as mp:
        import torchvision.models._api as api

        mp.setattr(api, "load_state_dict_from_url", lambda url, *a, **k: dict(state))
        path = recipe(tmp, method={"name": "kd"}, data={"train_subset": 32, "val_subset": 32},
                      model={"student": "resnet18", "student_pretrained": True,
                             "teacher": "resnet18", "teacher_pretrained": True})
        assert main(["distill", str(path), "--out", str(tmp / "run")]) == 0
    saved = yaml.safe_load((tmp / "run" / "config.yaml").read_text())["model"]
    assert saved["teacher_pretrained"] is True and saved["student_pretrained"] is True
    assert "teacher **resnet18** (teacher_pretrained=True)" in (tmp / "run" / "report.md"
                                                                 ).read_text()
    return tmp / "run"


def test_eval_and_export_do_not_load_pretrained_weights(pretrained_run, tmp_path, capsys,
                                                         monkeypatch):
    """No download is tried (it would fail here), and a local file named in the config may be
    gone: only the run's own checkpoint is read."""
    asked = offline(monkeypatch)
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    capsys.readouterr()
    assert main(["eval", str(run), "--which", "last"]) == 0
    assert "student " in capsys.readouterr().out
    assert main(["export", str(run), "--which", "last"]) == 0
    assert (run / "student.safetensors").is_file()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["teacher_pretrained"] = str(tmp_path / "deleted" / "resnet18.pth")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", str(run), "--which", "last"]) == 0
    assert asked == []


def test_a_resumed_run_does_not_load_the_students_pretrained_weights(
        pretrained_run, tmp_path, capsys, monkeypatch, resnet18_file):
    """The checkpoint replaces the student, so an offline resume works: only the teacher's
    weights (here a local file) are read."""
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["teacher_pretrained"] = str(resnet18_file)
    cfg["schedule"]["epochs"] += 1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    asked = offline(monkeypatch)
    capsys.readouterr()
    assert main(["distill", str(run / "config.yaml"), "--out", str(run), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert asked == []
