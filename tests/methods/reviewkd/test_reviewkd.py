"""ReviewKD (Chen et al., CVPR 2021): the reviewed levels and their shapes, the warm-up,
and which stages are reviewed with and without a named stem."""

from __future__ import annotations

import pytest
import torch

from kdlab.errors import UserError
from kdlab.methods import build_distiller
from kdlab.models import MODELS
from kdlab.models.staged.view import Staged


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 16, 16, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, y, torch.arange(b)


def test_reviewkd_shapes_and_warmup(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("reviewkd", {}, student, teacher)
    x, y, _ = _batch()
    s = student.features(x)
    fused = d.review([*s.stages[1:], s.embedding[:, :, None, None]])  # stage 0: the stem
    t = teacher.features(x)
    assert [f.shape for f in fused] == [*(f.shape for f in t.stages[1:]), (8, 64, 1, 1)]
    d.set_epoch(0, 240)
    _, l0 = d(x, y)
    d.set_epoch(19, 240)
    _, l19 = d(x, y)
    d.set_epoch(100, 240)
    _, l100 = d(x, y)
    assert l0["review"].item() == pytest.approx(l19["review"].item() / 20, rel=1e-4)
    assert l100["review"].item() == pytest.approx(l19["review"].item(), rel=1e-4)


@pytest.mark.parametrize("features", ["pre_relu", "stage_outputs"])
def test_reviewkd_targets_are_the_teachers_pre_relu_or_stage_outputs(features, tiny_pair):
    """``pre_relu`` (the authors' ``preact=True``, mdistiller's ``preact_feats``): HCL
    against the teacher's stage outputs before their ReLU; ``stage_outputs``: after it."""
    from kdlab.methods.reviewkd.losses import hcl_loss

    teacher, student = tiny_pair
    d = build_distiller("reviewkd", {"warmup_epochs": 0, "teacher_features": features},
                        student, teacher)
    x, y, _ = _batch()
    _, losses = d(x, y)
    with torch.no_grad():
        pre, post, h = [], [], x
        for stage in teacher.net.body:  # conv-BN-ReLU stages: pre-ReLU = after the BN
            pre.append(stage[:2](h))
            h = stage(h)
            post.append(h)
        s, t = student.features(x), teacher.features(x)
        fused = d.review([*s.stages[1:], s.embedding[:, :, None, None]])
        maps = pre if features == "pre_relu" else post
        want = hcl_loss(fused, [*maps[1:], t.embedding[:, :, None, None]], (4, 2, 1))
    assert losses["review"].item() == pytest.approx(want.item(), rel=1e-6)
    assert any((p < 0).any() for p in pre[1:])  # the two settings do differ here


def test_reviewkd_teacher_features_must_be_known(tiny_pair):
    with pytest.raises(UserError, match="teacher_features"):
        build_distiller("reviewkd", {"teacher_features": "post"}, *reversed(tiny_pair))


def _abf_channels(d) -> list[tuple[int, int]]:
    return [(m.conv1[0].in_channels, m.conv2[0].out_channels) for m in d.abfs]


def test_reviewkd_reviews_the_authors_levels_not_the_stem():
    """The authors' CIFAR code: layer1..3 and the pool, ``in_channels = [16, 32, 64, 64]``."""
    student = MODELS.get("resnet8")(num_classes=10)
    teacher = MODELS.get("resnet20")(num_classes=10)
    assert not student.stem_names and student.num_stages == 4  # stage 0 is the stem conv
    assert student.stages_after_stem() == [1, 2, 3]
    d = build_distiller("reviewkd", {}, student, teacher)
    assert d.num_stages == 3 and len(d.abfs) == 4
    assert _abf_channels(d) == [(16, 16), (32, 32), (64, 64), (64, 64)]
    assert d.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]
    x = torch.randn(2, 3, 32, 32)
    _, losses = d(x, torch.arange(2))
    assert torch.isfinite(losses["review"])
    # method.levels overrides: all four stages, the stem included
    d = build_distiller("reviewkd", {"levels": 4}, student, teacher)
    assert _abf_channels(d) == [(16, 16), (16, 16), (32, 32), (64, 64), (64, 64)]
    with pytest.raises(UserError, match=r"method\.reviewkd\.levels must be at least 1"):
        build_distiller("reviewkd", {"levels": 0}, student, teacher)  # the field's range
    with pytest.raises(UserError, match=r"method\.levels must be between 1 and 4"):
        build_distiller("reviewkd", {"levels": 5}, student, teacher)  # the networks' stages


def test_reviewkd_keeps_every_stage_when_the_stem_is_named_apart(tiny_pair):
    def stem_apart(view: Staged) -> Staged:  # the same network, its stage 0 named the stem
        return Staged(view.net, stem=view.stage_names[0], stages=view.stage_names[1:],
                      classifier=view.classifier_names, input_shape=view.input_shape,
                      num_classes=view.num_classes)

    teacher, student = (stem_apart(v) for v in tiny_pair)
    assert student.stem_names and student.stages_after_stem() == [0, 1, 2]
    d = build_distiller("reviewkd", {}, student, teacher)
    assert d.num_stages == 3
    assert _abf_channels(d) == [(16, 32), (32, 64), (32, 64), (32, 64)]
    # the empty-stem views of the same networks review the same three stages
    d_zoo = build_distiller("reviewkd", {}, *reversed(tiny_pair))
    assert _abf_channels(d_zoo) == _abf_channels(d)
