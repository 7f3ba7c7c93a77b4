"""Bridge modules (FCFD App. A.1): the three size cases, LeakyReLU for post-ReLU targets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdlab.core.config import build_dataclass, load_config
from kdlab.errors import UserError
from kdlab.methods import METHODS, build_distiller
from kdlab.methods.shared.bridge import Bridge
from kdlab.models import MODELS, build_model
from kdlab.models.staged.view import StageInfo


@pytest.mark.parametrize(
    ("src_hw", "dst_hw", "kind", "conv"),
    [
        ((8, 8), (8, 8), "same", nn.Conv2d),
        ((16, 16), (8, 8), "down", nn.Conv2d),
        ((7, 7), (4, 4), "down", nn.Conv2d),  # odd sizes: ceil(7 / 2) = 4
        ((4, 4), (8, 8), "up", nn.ConvTranspose2d),
    ],
)
def test_bridge_shapes(src_hw, dst_hw, kind, conv):
    src = StageInfo(5, *src_hw, post_relu=False)
    dst = StageInfo(12, *dst_hw, post_relu=False)
    b = Bridge(src, dst)
    assert b.kind == kind
    assert type(b[0]) is conv
    assert isinstance(b[1], nn.BatchNorm2d) and len(b) == 2
    k = 4 if kind == "up" else 3
    assert b[0].kernel_size == (k, k)
    assert b[0].stride == ((1, 1) if kind == "same" else (2, 2))
    y = b(torch.randn(2, 5, *src_hw))
    assert y.shape == (2, 12, *dst_hw)


@pytest.mark.parametrize(("src_hw", "dst_hw"), [((8, 8), (8, 8)), ((16, 16), (8, 8)),
                                                 ((8, 8), (16, 16))])
def test_bridge_initialisations(src_hw, dst_hw):
    """``kaiming``: every conv He-normal (fan-out, ReLU), no bias. ``fcfd_authors`` (their
    MetaModel, classification/models/meta.py): the stride-2 and transposed convs with a bias;
    He-normal weights for nn.Conv2d only, so the transposed conv keeps PyTorch's default
    uniform init, bound 1/sqrt(out_channels * 16) on weights and bias."""
    src, dst = StageInfo(96, *src_hw, post_relu=False), StageInfo(160, *dst_hw, post_relu=False)
    torch.manual_seed(0)
    kaiming, authors = Bridge(src, dst), Bridge(src, dst, init="fcfd_authors")
    assert kaiming[0].bias is None
    assert (authors[0].bias is not None) == (kaiming.kind != "same")
    up = kaiming.kind == "up"
    fan_out = (96 * 16) if up else (160 * 9)  # a ConvTranspose2d's weight is (in, out, k, k)
    he = (2 / fan_out) ** 0.5
    assert kaiming[0].weight.std().item() == pytest.approx(he, rel=0.05)
    if up:
        bound = 1 / (160 * 16) ** 0.5  # weight.size(1) * k * k
        for t in (authors[0].weight, authors[0].bias):
            assert t.abs().max().item() <= bound
        assert authors[0].weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
    else:
        assert authors[0].weight.std().item() == pytest.approx(he, rel=0.05)
    assert torch.equal(authors[1].weight, torch.ones(160))
    with pytest.raises(ValueError, match="bridge init"):
        Bridge(src, dst, init="xavier")


def test_fcfd_bridges_start_as_the_authors_unless_told():
    teacher, student = build_model("vgg13", num_classes=10), build_model("mobilenetv2",
                                                                         num_classes=10)
    d = build_distiller("fcfd", {}, student, teacher)
    ups = [b for b in [*d.b_st.values(), *d.b_ts.values()] if b.kind == "up"]
    assert ups and all(b[0].bias is not None for b in ups)
    d = build_distiller("fcfd", {"bridge_init": "kaiming"}, student, teacher)
    assert all(b[0].bias is None for b in [*d.b_st.values(), *d.b_ts.values()])
    with pytest.raises(UserError, match="bridge_init"):
        build_distiller("fcfd", {"bridge_init": "he"}, student, teacher)
    fitnet = build_distiller("fitnet", {"regressor": "bridge"}, student, teacher)
    assert fitnet.bridge[0].bias is None  # FitNet's bridge keeps kdlab's init


def test_leaky_relu_only_for_post_relu_targets():
    src = StageInfo(4, 8, 8, post_relu=True)
    plain = Bridge(src, StageInfo(6, 8, 8, post_relu=False))
    relu = Bridge(src, StageInfo(6, 8, 8, post_relu=True))
    assert not any(isinstance(m, nn.LeakyReLU) for m in plain)
    assert isinstance(relu[-1], nn.LeakyReLU) and relu[-1].negative_slope == pytest.approx(0.1)
    y = relu(torch.randn(4, 4, 8, 8))
    assert (y < 0).any()  # leaky: negatives are scaled, not cut


@pytest.mark.parametrize(("src_hw", "dst_hw"), [((32, 32), (8, 8)), ((8, 8), (6, 6)),
                                                 ((8, 8), (8, 4))])
def test_unbridgeable_sizes_say_what_to_do(src_hw, dst_hw):
    with pytest.raises(UserError, match="factor of 2"):
        Bridge(StageInfo(4, *src_hw, False), StageInfo(4, *dst_hw, False), where="stage 2")


# --------------------------------------------------------------------- every recipe pair
RECIPES = sorted(Path(__file__).resolve().parents[3].glob("recipes/*/f*/*.yaml"))
INPUT = {"cifar100": (3, 32, 100), "imagenet": (3, 224, 1000), "fashion_mnist": (1, 28, 10)}
# classification recipes (the detection ones have FPN bridges:
# tests/methods/test_detection_methods.py)
RECIPES = [p for p in RECIPES if p.parent.name in ("fcfd", "fitnet")
           and p.parent.parent.name in INPUT]


def test_recipes_exist():
    names = {f"{p.parent.parent.name}/{p.parent.name}/{p.stem}" for p in RECIPES}
    assert len([n for n in names if n.startswith("cifar100/fcfd/")]) == 12
    assert {"imagenet/fcfd/resnet18_from_resnet34", "imagenet/fcfd/mobilenet_v1_from_resnet50",
            "fashion_mnist/fcfd/resnet8_from_resnet32"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.parent.name}/"
                         f"{p.parent.name}/{p.stem}")
def test_recipe_bridges_build_with_the_right_shapes(recipe):
    """The recipe validates, its models exist, and every bridge maps the student's feature
    to the teacher's shape and back."""
    cfg = load_config(recipe)
    cls = METHODS.get(cfg.method_name)
    build_dataclass(cls.Config, cfg.method_options, where=f"method.{cfg.method_name}")
    if not cfg.model.teacher_pretrained:
        want = f"runs/{cfg.data.name}/ce/{cfg.model.teacher}/best.pt"
        assert cfg.model.teacher_checkpoint == want
    missing = [m for m in (cfg.model.student, cfg.model.teacher) if m not in MODELS]
    assert not missing, f"{recipe}: models not registered: {missing}"
    c, size, n_cls = INPUT[cfg.data.name]
    torch.manual_seed(0)
    student = build_model(cfg.model.student, num_classes=n_cls, in_channels=c, input_size=size)
    teacher = build_model(cfg.model.teacher, num_classes=n_cls, in_channels=c, input_size=size)
    d = build_distiller(cfg.method_name, cfg.method_options, student, teacher)
    s_info, t_info = student.stage_info, teacher.stage_info
    bridges = {"fitnet": lambda: {(cfg.method["position"], "st"): d.bridge}}.get(
        cfg.method_name, lambda: {**{(int(k), "st"): b for k, b in d.b_st.items()},
                                  **{(int(k), "ts"): b for k, b in d.b_ts.items()}})()
    assert bridges
    d.eval()
    with torch.no_grad():
        for (k, way), bridge in bridges.items():
            src, dst = (s_info, t_info) if way == "st" else (t_info, s_info)
            y = bridge(torch.randn(1, *src[k - 1].shape))
            assert y.shape == (1, *dst[k - 1].shape), (k, way)
