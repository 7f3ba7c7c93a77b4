"""CIFAR MobileNetV2 / ShuffleNet v1 / v2: sizes, FCFD stage division, 1x28x28 inputs.

Reference numbers were found by instantiating the reference definitions at 100 classes:
HobbitLong/RepDistiller models/{mobilenetv2.py: mobile_half(100), ShuffleNetv1.py:
ShuffleV1(num_classes=100), ShuffleNetv2.py: ShuffleV2(num_classes=100)} at commit b84f547c,
and the FCFD authors' copies (LiuDongyang6/FCFD classification/models/, commit 2aefb7bc), which
give the same counts. Stage shapes come from the authors' ``stage_forward`` on a 3x32x32
input; their ``stage_input`` attribute says which outputs are pre-ReLU ("beforerelu").
"""

from __future__ import annotations

import pytest
import torch

from kdlab.models import build_model
from kdlab.models.cifar.shufflenetv1 import ChannelShuffle

# name: (parameters, buffer elements, state_dict entries) of the reference at 100 classes
REFERENCE_SIZES = {
    "mobilenetv2": (812_836, 18_421, 320),
    "shufflev1": (949_258, 23_785, 296),
    "shufflev2": (1_355_528, 16_236, 338),
}

# name: (C, H, W) of each stage output at 3x32x32, in the FCFD authors' stage division
FCFD_STAGE_SHAPES = {
    "mobilenetv2": [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (1280, 2, 2)],
    "shufflev1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)],
    "shufflev2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (1024, 4, 4)],
}

# authors' stage_input: "beforerelu" for MobileNetV2 and ShuffleV1, "afterrelu" for ShuffleV2
FCFD_POST_RELU = {"mobilenetv2": False, "shufflev1": False, "shufflev2": True}

# width of the stem conv, whose input channels follow in_channels (3x3 for MobileNetV2)
STEM = {"mobilenetv2": (16, 9), "shufflev1": (24, 1), "shufflev2": (24, 1)}

NAMES = sorted(REFERENCE_SIZES)


@pytest.mark.parametrize("name", NAMES)
def test_sizes_match_reference(name):
    net = build_model(name, num_classes=100).net
    params = sum(p.numel() for p in net.parameters())
    buffers = sum(b.numel() for b in net.buffers())
    assert (params, buffers, len(net.state_dict())) == REFERENCE_SIZES[name]


@pytest.mark.parametrize("name", NAMES)
def test_in_channels_only_changes_the_stem(name):
    n3 = sum(p.numel() for p in build_model(name, num_classes=100).net.parameters())
    n1 = sum(p.numel() for p in build_model(name, num_classes=100, in_channels=1)
             .net.parameters())
    width, kernel_area = STEM[name]
    assert n3 - n1 == 2 * width * kernel_area


@pytest.mark.parametrize("name", NAMES)
def test_fcfd_stage_division(name):
    staged = build_model(name, num_classes=100)
    info = staged.stage_info
    assert staged.num_stages == len(FCFD_STAGE_SHAPES[name])
    assert [i.shape for i in info] == FCFD_STAGE_SHAPES[name]
    assert [i.post_relu for i in info] == [FCFD_POST_RELU[name]] * staged.num_stages
    assert staged.embedding_dim == FCFD_STAGE_SHAPES[name][-1][0]


@pytest.mark.parametrize("name", NAMES)
def test_fashion_mnist_input(name):
    torch.manual_seed(0)
    staged = build_model(name, num_classes=10, in_channels=1, input_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        logits = staged.net(x)
        feats = staged.features(x)
        assert logits.shape == (2, 10)
        assert torch.equal(feats.logits, logits)
        for k in range(staged.num_stages):
            assert torch.equal(staged.run_from(k, feats.stages[k]).logits, logits)
    assert staged.stage_info[-1].height == staged.stage_info[-1].width  # 4x4 or 2x2
    assert staged.stage_info[0].channels == FCFD_STAGE_SHAPES[name][0][0]


@pytest.mark.parametrize("name", NAMES)
def test_later_stages_leave_earlier_outputs_intact(name):
    """No stage changes its input in place: each kept stage output is what its stage made."""
    torch.manual_seed(0)
    staged = build_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stages = staged.features(x).stages
        prev = staged.stem_forward(x)
        for k, out in enumerate(stages):
            assert torch.equal(staged.stage_forward(k, prev), out), f"stage {k} was modified"
            prev = out


def test_channel_shuffle_matches_definition():
    """Output channel j * g + i is input channel i * (C / g) + j (ShuffleNet, Sec. 3.1)."""
    g, per = 3, 4
    x = torch.randn(2, g * per, 3, 3)
    out = ChannelShuffle(g)(x)
    for i in range(g):
        for j in range(per):
            assert torch.equal(out[:, j * g + i], x[:, i * per + j])
