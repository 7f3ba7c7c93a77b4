"""FRSKD (Ji et al., CVPR 2021): losses against direct formulas, gradient flow, students."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from kdlab.core.config import build_dataclass, load_config
from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.methods.frskd.frskd import FRSKD, default_levels
from kdlab.models import MODELS
from kdlab.models.staged.view import Staged
from support.references import ref_kl


def _batch(student: Staged, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, *student.input_shape, generator=g)
    targets = torch.randint(0, student.num_classes, (n,), generator=g)
    return images, targets


def _ref_at(f_s, f_t):
    """Mean over batch and positions of (Q_s/||Q_s|| - Q_t/||Q_t||)^2, Q = mean_c F^2."""
    b, _, h, w = f_s.shape
    total = 0.0
    for i in range(b):
        maps = []
        for f in (f_s[i], f_t[i]):
            q = [[sum(f[c, y, x].item() ** 2 for c in range(f.shape[0])) / f.shape[0]
                  for x in range(w)] for y in range(h)]
            norm = math.sqrt(sum(v * v for row in q for v in row))
            maps.append([[v / norm for v in row] for row in q])
        total += sum((maps[0][y][x] - maps[1][y][x]) ** 2 for y in range(h) for x in range(w))
    return total / (b * h * w)


def _grads(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]


def test_registered_and_config_checked(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd", {"alpha": 1, "beta": 200}, student, None)
    assert isinstance(d, FRSKD) and d.cfg.alpha == 1.0 and d.cfg.beta == 200.0
    assert FRSKD.needs_teacher is False
    with pytest.raises(UserError):
        build_distiller("frskd", {"gamma": 1}, student, None)
    with pytest.raises(UserError):
        build_distiller("frskd", {"levels": 1}, student, None)


def test_losses_match_the_paper_formulas(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd", {"alpha": 2.0, "beta": 100.0, "temperature": 4.0}, student, None)
    images, targets = _batch(student, n=3)
    logits, losses = d(images, targets)
    assert set(losses) == {"ce", "self_teacher_ce", "kd", "feat"}
    assert logits.shape == (3, student.num_classes)
    assert d.levels == 3  # the tiny student's stages after its stem (stage 0)
    feats = student.features(images).stages[-3:]
    refined, st_logits = d.self_teacher([f.detach() for f in feats])
    torch.testing.assert_close(losses["ce"], nn.functional.cross_entropy(logits, targets))
    torch.testing.assert_close(
        losses["self_teacher_ce"], nn.functional.cross_entropy(st_logits, targets))
    assert losses["kd"].item() == pytest.approx(2.0 * ref_kl(logits, st_logits, 4.0), rel=1e-4)
    ref_feat = sum(_ref_at(f.detach(), r.detach()) for f, r in zip(feats, refined, strict=True))
    assert losses["feat"].item() == pytest.approx(100.0 * ref_feat, rel=1e-4)
    # refined maps are d_i = width x c_i wide and keep the student's spatial sizes
    for f, r in zip(feats, refined, strict=True):
        assert r.shape == (3, 2 * f.shape[1], *f.shape[2:])


def test_frskd_f_is_soft_labels_only(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd", {"beta": 0}, student, None)
    _, losses = d(*_batch(student))
    assert set(losses) == {"ce", "self_teacher_ce", "kd"}


@pytest.mark.parametrize("detach", [False, True])
def test_self_teacher_ce_reaches_the_backbone_as_in_the_authors_loop(tiny_pair, detach):
    """The authors feed the BiFPN the student's features as they are: the self-teacher's CE
    trains the student's stages it reads (and those before); detach_features stops it."""
    _, student = tiny_pair
    d = build_distiller("frskd", {"detach_features": detach}, student, None)
    images, targets = _batch(student)
    d.zero_grad()
    _, losses = d(images, targets)
    losses["self_teacher_ce"].backward()
    assert len(_grads(d.self_teacher)) > 0
    backbone = d.student.stage_modules(d.student.num_stages - d.levels)
    assert bool(_grads(backbone)) is not detach
    assert not _grads(d.student.classifier_modules())  # the student's head is not read


def test_gradient_flow(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd", {}, student, None)
    images, targets = _batch(student)

    # the distillation losses train the student only (soft labels, refined maps are targets)
    for name in ("kd", "feat"):
        d.zero_grad()
        _, losses = d(images, targets)
        losses[name].backward()
        assert len(_grads(d.student)) > 0, name
        assert not _grads(d.self_teacher), name

    # the feature loss reaches the earliest stage the self-teacher reads
    first_stage = d.student.stage_modules(d.student.num_stages - d.levels)
    d.zero_grad()
    _, losses = d(images, targets)
    losses["feat"].backward()
    assert len(_grads(first_stage)) > 0


def test_one_pass_through_each_network_per_step(tiny_pair, monkeypatch):
    """The self-teacher reads the features of the student's one forward pass."""
    _, student = tiny_pair
    d = build_distiller("frskd", {}, student, None)
    calls = {"student": 0, "self_teacher": 0}

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    monkeypatch.setattr(student, "features", counted("student", student.features))
    monkeypatch.setattr(d.self_teacher, "forward", counted("self_teacher", d.self_teacher.forward))
    _, losses = d(*_batch(student))
    sum(losses.values()).backward()
    assert calls == {"student": 1, "self_teacher": 1}


def test_one_training_step_changes_student_and_self_teacher(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd", {}, student, None)
    before = {n: p.detach().clone() for n, p in d.named_parameters()}
    opt = torch.optim.SGD(d.parameters(), lr=0.05, momentum=0.9)
    _, losses = d(*_batch(student))
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = {n for n, p in d.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("student.") for n in changed)
    assert any(n.startswith("self_teacher.") for n in changed)


def test_evaluated_and_exported(tiny_pair):
    _, student = tiny_pair
    d = build_distiller("frskd", {"levels": 3}, student, None)
    assert len(d.self_teacher.in_channels) == 3
    nets = d.evaluated()
    assert list(nets) == ["student", "self_teacher"]
    assert nets["student"] is student
    images, _ = _batch(student)
    d.eval()
    with torch.no_grad():
        assert nets["self_teacher"](images).shape == (4, student.num_classes)
    exported = d.exported()
    assert list(exported) == ["student"] and exported["student"] is student.net
    # the self-teacher is training-time only: nothing of it is in the exported weights
    assert all(not k.startswith("self_teacher") for k in exported["student"].state_dict())


def _torchvision_resnet18(num_classes: int = 10, size: int = 64) -> Staged:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=num_classes)
    return Staged(net, stem=["conv1", "bn1", "relu", "maxpool"],
                  stages=[["layer1"], ["layer2"], ["layer3"], ["layer4"]],
                  classifier=["fc"], input_shape=(3, size, size), num_classes=num_classes)


@pytest.mark.parametrize(
    ("model", "kwargs", "channels"),
    [
        # the authors' CIFAR ResNets and WRN: their residual stages, not the stem conv
        ("resnet8", {}, [16, 32, 64]),
        ("wrn_16_2", {}, [32, 64, 128]),
        ("resnet8x4", {}, [64, 128, 256]),
        # the authors' ImageNet ResNets: layer1..layer4
        ("resnet18", {"input_size": 64}, [64, 128, 256, 512]),
    ],
)
def test_default_levels_are_the_authors_stages_after_the_stem(model, kwargs, channels):
    student = MODELS.get(model)(num_classes=10, **kwargs)
    assert not student.stem_names  # the zoo's stage 0 is the stem
    d = build_distiller("frskd", {}, student, None)
    assert default_levels(student) == d.levels == len(channels)
    assert d.self_teacher.in_channels == channels
    assert d.self_teacher.widths == [2 * c for c in channels]
    # method.levels still overrides: all stages, the stem included
    d = build_distiller("frskd", {"levels": student.num_stages}, student, None)
    assert d.self_teacher.in_channels == [s.channels for s in student.stage_info]


def test_default_levels_keep_every_stage_when_the_stem_is_named_apart():
    student = _torchvision_resnet18()  # stem = conv1..maxpool, stages = layer1..layer4
    assert student.stem_names and default_levels(student) == 4
    two = Staged(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, 2), nn.Flatten(),
                               nn.Linear(4, 3)),
                 stem=[], stages=[["0"], ["1"]], classifier=["2", "3"],
                 input_shape=(3, 9, 9), num_classes=3)
    assert default_levels(two) == 2  # never fewer than two levels


def test_torchvision_resnet18_one_step():
    student = _torchvision_resnet18()
    d = build_distiller("frskd", {"width": 1.0}, student, None)
    assert d.self_teacher.widths == [64, 128, 256, 512]
    opt = torch.optim.SGD(d.parameters(), lr=0.01)
    logits, losses = d(*_batch(student, n=2))
    loss = sum(losses.values())
    assert torch.isfinite(loss) and logits.shape == (2, 10)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in d.self_teacher.parameters())


RECIPES = sorted(Path(__file__).resolve().parents[3].glob("recipes/*/frskd/*.yaml"))


def test_recipes_exist_including_frskd_f():
    names = {p.name for p in RECIPES}
    assert "resnet8_from_self.yaml" in names and "resnet8_from_self_f.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_is_valid(path):
    cfg = load_config(path)
    assert cfg.method_name == "frskd"
    opts = build_dataclass(FRSKD.Config, cfg.method_options, where="method.frskd")
    assert opts.alpha in (1.0, 2.0, 3.0) and opts.beta in (0.0, 100.0, 200.0)
    assert (opts.beta == 0.0) == path.stem.endswith("_f")
