"""Every registered model: shapes, the staged view against the plain forward, stage metadata,
the FCFD stage division and the reference parameter counts.

Reference parameter counts (CIFAR zoo, 100 classes) were found by instantiating
HobbitLong/RepDistiller ``models.model_dict[name](num_classes=100)`` at commit b84f547c
(vgg* there are the ``*_bn`` variants, MobileNetV2 = ``mobile_half``, ResNet50 = resnetv2's)
and counting ``parameters()``; the FCFD authors' copies (LiuDongyang6/FCFD
classification/models/, commit 2aefb7bc) give the same counts. MobileNet v1: the authors'
``models/IN/mobilenet.py`` ``MobileNet()`` (1000 classes). The torchvision counts are
torchvision's own networks at 1000 classes (they show that the wrapper changes nothing).

Stage counts and pre-/post-ReLU stage outputs follow the authors' ``stage_forward`` and
``stage_input`` ("afterrelu" / "beforerelu" / "beforebn") in the same files.
"""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch

from kdlab.errors import UserError
from kdlab.models import MODELS, build_model, model_task

CIFAR_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet50_cifar": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflev1": 949_258,
    "shufflev2": 1_355_528,
}

IMAGENET_PARAMS = {  # at 1000 classes
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v1": 4_231_976,
}

# Post-ReLU flag of each stage output, one entry per stage (so also the FCFD stage count).
_R4, _P4, _R5, _P5 = [True] * 4, [False] * 4, [True] * 5, [False] * 5
CIFAR_RESNETS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
                 "resnet110", "resnet8x4", "resnet32x4")
POST_RELU = {
    **{n: _R4 for n in CIFAR_RESNETS},
    **{n: _P4 for n in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")},
    **{n: _P5 for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "resnet50_cifar": _R5,
    "mobilenetv2": _P5,
    "shufflev1": _P4,
    "shufflev2": _R4,
    "resnet18": _R5,
    "resnet34": _R5,
    "resnet50": _R5,
    "mobilenet_v1": _R5,
    # stem conv-BN-ReLU6, linear bottlenecks, 1x1 conv-BN-ReLU6 (no FCFD reference)
    "mobilenet_v2": [True, False, False, False, True],
}

# Output stride of every stage at a 32x32 (CIFAR) or 64x64 (ImageNet nets) input.
STRIDES = {
    **{n: [1, 1, 2, 4] for n in CIFAR_RESNETS},
    **{n: [1, 1, 2, 4] for n in ("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")},
    **{n: [1, 2, 4, 8, 8] for n in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "resnet50_cifar": [1, 1, 2, 4, 8],
    "mobilenetv2": [2, 2, 4, 8, 16],
    "shufflev1": [1, 2, 4, 8],
    "shufflev2": [1, 2, 4, 8],
    "resnet18": [4, 4, 8, 16, 32],
    "resnet34": [4, 4, 8, 16, 32],
    "resnet50": [4, 4, 8, 16, 32],
    "mobilenet_v1": [2, 4, 8, 16, 32],
    "mobilenet_v2": [2, 4, 8, 16, 32],
}

# The classification zoo; the segmentation networks have their own tests (test_seg_models.py).
NAMES = [n for n in MODELS.names() if model_task(n) == "classification"]
NUM_CLASSES = 7


def _size(name: str) -> int:
    return 64 if name in IMAGENET_PARAMS else 32


_BUILT: dict[str, object] = {}


def _model(name: str):
    """One eval-mode instance per model for the whole module (building is the slow part)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        m = build_model(name, num_classes=NUM_CLASSES, input_size=_size(name))
        # Non-trivial BN statistics, so that a skipped or repeated module changes the output.
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.2, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.2, 0.2)
        _BUILT[name] = m.eval()
    return _BUILT[name]


def _input(name: str, channels: int = 3, size: int | None = None) -> torch.Tensor:
    size = size or _size(name)
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(1))


def test_the_zoo_is_complete():
    assert set(CIFAR_PARAMS) | set(IMAGENET_PARAMS) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_staged_features_equal_the_plain_forward(name):
    m = _model(name)
    x = _input(name)
    with torch.no_grad():
        logits = m.net(x)
        f = m.features(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(f.logits, logits, rtol=1e-5, atol=1e-5)
    assert f.embedding.shape == (2, m.embedding_dim)
    assert len(f.stages) == m.num_stages
    with torch.no_grad():
        torch.testing.assert_close(m(x), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_run_from_every_stage_reproduces_the_logits(name):
    m = _model(name)
    x = _input(name)
    with torch.no_grad():
        f = m.features(x)
        kept = [s.clone() for s in f.stages]
        for k in range(-1, m.num_stages):
            start = m.stem_forward(x) if k == -1 else f.stages[k]
            out = m.run_from(k, start)
            torch.testing.assert_close(out.logits, f.logits, rtol=1e-5, atol=1e-5)
            assert len(out.stages) == m.num_stages - k - 1
            for a, b in zip(out.stages, f.stages[k + 1:], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # No later module changed a kept stage output in place.
    for a, b in zip(kept, f.stages, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_staged_forward_equals_the_plain_forward(name):
    m = build_model(name, num_classes=NUM_CLASSES, input_size=_size(name)).train()
    x = _input(name)
    with torch.no_grad():
        torch.manual_seed(3)
        plain = m.net(x)
        torch.manual_seed(3)
        staged = m.features(x).logits
    torch.testing.assert_close(staged, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_stage_info_matches_the_features_and_the_fcfd_division(name):
    m = _model(name)
    size = _size(name)
    with torch.no_grad():
        f = m.features(_input(name))
    info = m.stage_info
    assert [i.shape for i in info] == [tuple(s.shape[1:]) for s in f.stages]
    assert m.num_stages == len(POST_RELU[name])
    assert [i.post_relu for i in info] == POST_RELU[name]
    assert [size // i.height for i in info] == STRIDES[name]
    assert m.input_shape == (3, size, size)
    assert m.embedding_dim == info[-1].channels


@pytest.mark.parametrize("name", sorted(CIFAR_PARAMS))
def test_cifar_parameter_counts_match_the_reference(name):
    net = build_model(name, num_classes=100).net
    assert sum(p.numel() for p in net.parameters()) == CIFAR_PARAMS[name]


@pytest.mark.parametrize("name", sorted(IMAGENET_PARAMS))
def test_imagenet_parameter_counts(name):
    net = build_model(name, num_classes=1000, input_size=224).net
    assert sum(p.numel() for p in net.parameters()) == IMAGENET_PARAMS[name]


@pytest.mark.parametrize("name", sorted(CIFAR_PARAMS))
def test_cifar_models_run_on_fashion_mnist_shapes(name):
    torch.manual_seed(0)
    m = build_model(name, num_classes=10, in_channels=1, input_size=28).eval()
    x = _input(name, channels=1, size=28)
    with torch.no_grad():
        logits = m.net(x)
        f = m.features(x)
        last = m.run_from(m.num_stages - 2, f.stages[-2]).logits
    assert logits.shape == (2, 10)
    torch.testing.assert_close(f.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, logits, rtol=1e-5, atol=1e-5)
    assert m.input_shape == (1, 28, 28)
    assert m.stage_info[0].height in (28, 14)


@pytest.mark.parametrize("name", sorted(IMAGENET_PARAMS))
def test_imagenet_models_take_other_input_channels(name):
    m = build_model(name, num_classes=5, in_channels=1, input_size=64).eval()
    with torch.no_grad():
        logits = m.net(_input(name, channels=1, size=64))
    assert logits.shape == (2, 5)
    assert [i.height for i in m.stage_info] == [64 // s for s in STRIDES[name]]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_pretrained_weights_that_cannot_be_downloaded_are_a_user_error(name, monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise URLError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="could not be downloaded"):
        MODELS.get(name)(num_classes=10, pretrained=True)


def test_the_download_failure_says_how_to_pass_a_local_file(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise URLError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"pretrained='/path/to/resnet18-[0-9a-f]+\.pth'"):
        MODELS.get("resnet18")(num_classes=10, pretrained=True)


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_pretrained_weights_from_a_local_file(num_classes, tmp_path):
    import torchvision

    torch.manual_seed(5)
    source = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(source.state_dict(), path)
    net = MODELS.get("mobilenet_v2")(num_classes=num_classes, pretrained=str(path)).net
    loaded, ref = net.state_dict(), source.state_dict()
    assert torch.equal(loaded["features.0.0.weight"], ref["features.0.0.weight"])
    assert torch.equal(loaded["features.18.1.running_var"], ref["features.18.1.running_var"])
    # The classifier is taken only when its shape fits.
    assert torch.equal(loaded["classifier.1.weight"], ref["classifier.1.weight"]) == (
        num_classes == 1000)


def test_pretrained_local_files_that_are_missing_or_wrong_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        MODELS.get("resnet18")(num_classes=10, pretrained=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read"):
        MODELS.get("resnet18")(num_classes=10, pretrained=str(garbage))
    other = tmp_path / "other.pth"
    torch.save({"something.weight": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="no tensor of torchvision's resnet18"):
        MODELS.get("resnet18")(num_classes=10, pretrained=str(other))
