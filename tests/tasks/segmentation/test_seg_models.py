"""Every registered segmentation network: the staged view against the plain forward, run_from
from every stage, stage metadata, the auxiliary head, LRASPP's skip stage, backbone weights
from a local file, and the listing.

Inputs are tiny (2 x C x 64 x 64) so that even the ResNet-101 networks run in about a second.
"""

from __future__ import annotations

import argparse
import copy
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision

from kdlab.cli.commands import listing
from kdlab.errors import UserError
from kdlab.models import MODELS, build_model, model_task, pretrained_models

K = 5
TORCHVISION = ("deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
               "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large")
DILATED = ("pspnet_resnet18", "pspnet_resnet101", "deeplabv3_resnet18", "deeplabv3_mobilenetv2")
CIRKD = ("deeplabv3_resnet18_cirkd", "deeplabv3_resnet101_cirkd", "deeplabv3_mobilenetv2_cirkd",
         "pspnet_resnet18_cirkd", "pspnet_resnet101_cirkd")  # weights from local files only
SMALL = ("seg_resnet20", "seg_resnet8")
SEG = [n for n in MODELS.names() if model_task(n) == "segmentation"]

_RESNET = [4, 4, 8, 8, 8]
STRIDES = {  # output stride of every stage
    **dict.fromkeys(("deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50",
                     "fcn_resnet101", "pspnet_resnet18", "pspnet_resnet101",
                     "deeplabv3_resnet18", "deeplabv3_resnet18_cirkd",
                     "deeplabv3_resnet101_cirkd", "pspnet_resnet18_cirkd",
                     "pspnet_resnet101_cirkd"), _RESNET),
    "deeplabv3_mobilenetv2": [2, 4, 8, 8, 8],
    "deeplabv3_mobilenetv2_cirkd": [2, 4, 8, 8, 8],
    "deeplabv3_mobilenet_v3_large": [2, 4, 8, 16, 16, 16],
    "lraspp_mobilenet_v3_large": [2, 4, 8, 16, 16, 16],
    "seg_resnet20": [2, 2, 4, 4],
    "seg_resnet8": [2, 2, 4, 4],
}
CHANNELS = {
    "deeplabv3_resnet50": [64, 256, 512, 1024, 2048],
    "pspnet_resnet18": [64, 64, 128, 256, 512],
    "deeplabv3_resnet18_cirkd": [128, 64, 128, 256, 512],  # the deep stem: 128 channels
    "pspnet_resnet101_cirkd": [128, 256, 512, 1024, 2048],
    "deeplabv3_mobilenetv2_cirkd": [32, 24, 32, 96, 320],
    "deeplabv3_mobilenetv2": [32, 24, 32, 96, 320],
    "lraspp_mobilenet_v3_large": [16, 24, 40, 80, 160, 960],
    "seg_resnet20": [16, 16, 32, 64],
}
EMBEDDING = {  # decoder width (LRASPP: 128 gated high-level + 40 low-level channels)
    "deeplabv3_resnet50": 256, "fcn_resnet50": 512, "lraspp_mobilenet_v3_large": 168,
    "pspnet_resnet18": 128, "pspnet_resnet101": 256, "deeplabv3_resnet18": 256,
    "deeplabv3_mobilenetv2": 256, "seg_resnet20": 64, "seg_resnet8": 32,
    # CIRKD's widths (winycg/CIRKD @ 48eb81b models/deeplabv3.py, pspnet.py)
    "deeplabv3_resnet18_cirkd": 128, "deeplabv3_resnet101_cirkd": 256,
    "deeplabv3_mobilenetv2_cirkd": 128, "pspnet_resnet18_cirkd": 128, "pspnet_resnet101_cirkd": 512,
}


def _channels(name: str) -> int:
    return 1 if name in SMALL else 3


def _input(name: str, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, _channels(name), 64, 64, generator=torch.Generator().manual_seed(1))


_BUILT: dict[str, object] = {}


def _model(name: str):
    """One eval-mode instance per network, with non-trivial BN statistics."""
    if name not in _BUILT:
        torch.manual_seed(0)
        m = build_model(name, num_classes=K, in_channels=_channels(name), input_size=64)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.2, 0.2)
                    mod.running_var.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.2, 0.2)
        _BUILT[name] = m.eval()
    return _BUILT[name]


def test_every_segmentation_network_is_registered_with_its_task():
    assert set(SEG) == set(TORCHVISION) | set(DILATED) | set(CIRKD) | set(SMALL)
    assert set(STRIDES) == set(SEG)
    for name in SEG:
        assert MODELS.get(name).task == "segmentation"
    assert set(TORCHVISION) | set(DILATED) <= set(pretrained_models())


@pytest.mark.parametrize("name", SEG)
def test_staged_logits_upsampled_equal_the_plain_forward(name):
    m = _model(name)
    x = _input(name)
    with torch.no_grad():
        plain = m.net(x)["out"]
        f = m.features(x)
    h, w = 64 // STRIDES[name][-1], 64 // STRIDES[name][-1]
    if name == "lraspp_mobilenet_v3_large":  # its classifier works at the skip stage's size
        h, w = 8, 8
    assert f.logits.shape == (1, K, h, w)  # the decoder's resolution, not upsampled
    assert f.embedding.shape == (1, EMBEDDING.get(name, f.embedding.shape[1]), h, w)
    assert m.embedding_dim == f.embedding.shape[1]
    assert f.extras == {}  # no auxiliary head unless asked for
    corners = getattr(m.net, "align_corners", False)  # CIRKD's networks: True
    up = F.interpolate(f.logits, size=(64, 64), mode="bilinear", align_corners=corners)
    torch.testing.assert_close(up, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SEG)
def test_run_from_every_stage_reproduces_the_logits(name):
    m = _model(name)
    x = _input(name)
    with torch.no_grad():
        f = m.features(x)
        kept = [s.clone() for s in f.stages]
        for k in range(-1, m.num_stages):
            start = m.stem_forward(x) if k == -1 else f.stages[k]
            earlier = {s: f.stages[s] for s in m.skips if s < k}
            out = m.run_from(k, start, earlier=earlier)
            torch.testing.assert_close(out.logits, f.logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.embedding, f.embedding, rtol=1e-5, atol=1e-5)
            assert len(out.stages) == m.num_stages - k - 1
    for a, b in zip(kept, f.stages, strict=True):  # no later module changed one in place
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", SEG)
def test_stage_info_strides_and_channels(name):
    m = _model(name)
    info = m.stage_info
    assert [64 // i.height for i in info] == STRIDES[name]
    assert [64 // i.width for i in info] == STRIDES[name]
    if name in CHANNELS:
        assert [i.channels for i in info] == CHANNELS[name]
    assert m.input_shape == (_channels(name), 64, 64)


def test_lraspp_reads_its_skip_stage_and_says_what_run_from_needs():
    m = _model("lraspp_mobilenet_v3_large")
    assert m.skips == (2,)
    x = _input("lraspp_mobilenet_v3_large")
    with torch.no_grad():
        f = m.features(x)
        with pytest.raises(UserError, match=r"reads stage 2.*earlier=\{2: feature\}"):
            m.run_from(3, f.stages[3])
        # The head really uses the skip stage: another low-level map changes the logits.
        other = m.run_from(3, f.stages[3], earlier={2: torch.zeros_like(f.stages[2])})
    assert not torch.allclose(other.logits, f.logits)


def test_a_deep_copy_of_a_decoder_view_runs_its_own_network():
    m = _model("lraspp_mobilenet_v3_large")
    twin = copy.deepcopy(m)
    x = _input("lraspp_mobilenet_v3_large")
    with torch.no_grad():
        before = m(x)
        twin.net.classifier.low_classifier.bias.add_(1.0)
        torch.testing.assert_close(m(x), before)
        torch.testing.assert_close(twin(x), before + 1.0)


@pytest.mark.parametrize("name", ["seg_resnet8", "pspnet_resnet18", "deeplabv3_mobilenetv2",
                                  "deeplabv3_mobilenet_v3_large"])
def test_auxiliary_head_in_training_mode(name):
    torch.manual_seed(0)
    m = build_model(name, num_classes=K, in_channels=_channels(name), input_size=64,
                    options={"aux": True})
    assert m.kdlab_spec["options"] == {"aux": True}
    assert len(m.aux_modules()) == 1
    x = _input(name, batch=2)  # training-mode BN needs more than one value per channel
    with torch.no_grad():
        m.train()
        torch.manual_seed(3)
        plain = m.net(x)
        torch.manual_seed(3)
        f = m.features(x)
        aux = f.extras["aux"]
        assert aux.shape[:2] == (2, K)
        assert aux.shape[-2:] == f.stages[m.aux_stage].shape[-2:]
        up = F.interpolate(aux, size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(up, plain["aux"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            F.interpolate(f.logits, size=(64, 64), mode="bilinear", align_corners=False),
            plain["out"], rtol=1e-5, atol=1e-5)
        m.eval()
        assert "aux" not in m.features(x).extras
        assert "aux" not in m.run_from(0, m.features(x).stages[0]).extras


def test_architecture_options_and_their_errors():
    assert "options" not in _model("seg_resnet8").kdlab_spec  # only recorded when given
    with pytest.raises(UserError, match="no auxiliary head"):
        build_model("lraspp_mobilenet_v3_large", num_classes=K, options={"aux": True})
    with pytest.raises(UserError, match="takes no option 'depth'"):
        build_model("seg_resnet8", num_classes=K, options={"depth": 3})


def test_resnet18_is_dilated_as_cirkd_with_imagenet_shapes():
    net = _model("pspnet_resnet18").net.backbone
    dil = [(b.conv1.dilation[0], b.conv2.dilation[0]) for b in (*net.layer3, *net.layer4)]
    assert dil == [(1, 2), (2, 2), (2, 4), (4, 4)]
    assert net.layer3[0].downsample[0].stride == (1, 1)
    assert net.layer4[0].conv1.stride == (1, 1)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    own = net.state_dict()
    assert {k: v.shape for k, v in own.items()} == {
        k: v.shape for k, v in reference.items() if not k.startswith("fc.")}


@pytest.mark.parametrize("name, source, prefix", [
    ("pspnet_resnet18", torchvision.models.resnet18, ""),
    ("deeplabv3_mobilenetv2", torchvision.models.mobilenet_v2, "features."),
    ("lraspp_mobilenet_v3_large", torchvision.models.mobilenet_v3_large, "features."),
])
def test_backbone_weights_from_a_local_file(name, source, prefix, tmp_path):
    torch.manual_seed(5)
    ref = source(weights=None).state_dict()
    path = tmp_path / "backbone.pth"
    torch.save(ref, path)
    net = MODELS.get(name)(num_classes=K, input_size=64, pretrained=str(path)).net
    own = net.state_dict()
    backbone = {k[len("backbone."):]: v for k, v in own.items() if k.startswith("backbone.")}
    assert backbone
    for k, v in backbone.items():
        assert torch.equal(v, ref[prefix + k]), k
    # The decoder stays fresh and says so: such a network is no trained teacher.
    assert net.kdlab_pretrained_skipped
    assert all(k.startswith("classifier.") for k in net.kdlab_pretrained_skipped)


def test_backbone_weights_with_other_input_channels_skip_the_first_conv(tmp_path):
    ref = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(ref, path)
    net = MODELS.get("deeplabv3_resnet18")(num_classes=K, in_channels=1, input_size=64,
                                           pretrained=str(path)).net
    assert net.backbone.conv1.weight.shape == (64, 1, 7, 7)
    assert "backbone.conv1.weight" in net.kdlab_pretrained_skipped
    assert torch.equal(net.backbone.layer4[1].conv2.weight, ref["layer4.1.conv2.weight"])


def test_backbone_weights_of_another_network_are_a_user_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"something.weight": torch.zeros(3)}, path)
    with pytest.raises(UserError, match="no tensor of torchvision's resnet18"):
        MODELS.get("pspnet_resnet18")(num_classes=K, pretrained=str(path))


def test_backbone_download_failure_is_a_user_error(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise URLError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"pretrained='/path/to/mobilenet_v3_large-"):
        MODELS.get("lraspp_mobilenet_v3_large")(num_classes=K, pretrained=True)


def test_the_scenes_pair_matches_stage_for_stage():
    teacher, student = _model("seg_resnet20"), _model("seg_resnet8")
    assert teacher.num_stages == student.num_stages
    assert [(i.height, i.width) for i in teacher.stage_info] == [
        (i.height, i.width) for i in student.stage_info]
    count = lambda m: sum(p.numel() for p in m.net.parameters())  # noqa: E731
    assert count(teacher) > 2.5 * count(student)


def test_a_training_step_reaches_every_parameter():
    """The main and auxiliary losses give every parameter a non-zero gradient (the main loss
    alone none to the auxiliary head), and one SGD step on them lowers the loss."""
    torch.manual_seed(0)
    m = build_model("seg_resnet8", num_classes=K, in_channels=1, input_size=64,
                    options={"aux": True}).train()
    x = _input("seg_resnet8", batch=4)
    y = torch.randint(0, K, (4, 64, 64), generator=torch.Generator().manual_seed(2))

    def loss_of(heads: tuple[str, ...]) -> torch.Tensor:
        f = m.features(x)
        outs = {"main": f.logits, "aux": f.extras["aux"]}
        return sum(F.cross_entropy(F.interpolate(outs[h], size=(64, 64), mode="bilinear",
                                                 align_corners=False), y) for h in heads)

    loss_of(("main",)).backward()
    unreached = {n for n, p in m.net.named_parameters() if p.grad is None}
    assert unreached and all(n.startswith("aux_classifier.") for n in unreached), unreached
    m.net.zero_grad(set_to_none=True)
    loss = loss_of(("main", "aux"))
    loss.backward()
    for name, p in m.net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"
    with torch.no_grad():
        for p in m.net.parameters():
            p -= 0.01 * p.grad
    assert loss_of(("main", "aux")).item() < loss.item()


def test_listing_shows_the_task(capsys):
    listing.run(argparse.Namespace(kind="models"))
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    for name in SEG:
        assert lines[name].startswith("segmentation ")
    assert lines["resnet20"].startswith("classification ")
