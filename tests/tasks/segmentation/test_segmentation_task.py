"""The segmentation task: metrics (direct and torchmetrics), loss, evaluation, report."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlab.models.staged.view import Staged
from kdlab.tasks import build_task
from kdlab.tasks.segmentation.inference import sliding, whole
from kdlab.tasks.segmentation.metrics import class_iou, confusion_matrix, scores

IGNORE = 255


def tiny_segnet(classes: int = 5, seed: int = 0, stride: int = 2, kernel: int = 3) -> Staged:
    """conv (stride 2) -> conv -> decoder conv -> 1x1 classifier, as a Staged view."""
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("s0", nn.Sequential(nn.Conv2d(1, 6, kernel, stride, kernel // 2), nn.ReLU()))
    net.add_module("s1", nn.Sequential(nn.Conv2d(6, 8, kernel, 1, kernel // 2), nn.ReLU()))
    net.add_module("dec", nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()))
    net.add_module("cls", nn.Conv2d(8, classes, 1))
    return Staged(net, stem=[], stages=[["s0"], ["s1"]], pre_pool=["dec"], pool=nn.Identity(),
                  classifier=["cls"], input_shape=(1, 16, 16), num_classes=classes)


def random_maps(n=3, k=5, h=9, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.2] = IGNORE
    pred = torch.where(torch.rand(n, h, w, generator=g) < 0.6, target.clamp(max=k - 1),
                       torch.randint(0, k, (n, h, w), generator=g))
    return pred, target


# ------------------------------------------------------------------ metrics
def test_metrics_match_a_direct_computation():
    k = 6  # class 5 never occurs: it has no IoU and does not count in the mean
    pred, target = random_maps(k=5)
    cm = confusion_matrix(pred, target, k, IGNORE)
    valid = target != IGNORE
    assert int(cm.sum()) == int(valid.sum())
    ious, accs = [], []
    for c in range(k):
        inter = ((pred == c) & (target == c) & valid).sum().item()
        union = (((pred == c) | (target == c)) & valid).sum().item()
        ious.append(inter / union if union else math.nan)
        if (target == c).any():
            accs.append(inter / (target == c).sum().item())
    got = class_iou(cm)
    for c in range(k):
        assert (math.isnan(ious[c]) and math.isnan(got[c])) or abs(got[c] - ious[c]) < 1e-12
    s = scores(cm)
    present = [x for x in ious if not math.isnan(x)]
    assert s["miou"] == pytest.approx(100 * sum(present) / len(present))
    correct = ((pred == target) & valid).sum().item()
    assert s["pixel_acc"] == pytest.approx(100 * correct / valid.sum().item())
    assert s["mean_acc"] == pytest.approx(100 * sum(accs) / len(accs))
    assert s["pixels"] == int(valid.sum())


def test_metrics_match_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    k = 5
    pred, target = random_maps(k=k, seed=4)
    cm = confusion_matrix(pred, target, k, IGNORE)
    s = scores(cm)
    iou = tm.MulticlassJaccardIndex(k, ignore_index=IGNORE, average="none")(pred, target)
    torch.testing.assert_close(class_iou(cm).float(), iou)
    macro = tm.MulticlassJaccardIndex(k, ignore_index=IGNORE, average="macro")(pred, target)
    assert s["miou"] == pytest.approx(100 * float(macro), abs=1e-4)
    micro = tm.MulticlassAccuracy(k, ignore_index=IGNORE, average="micro")(pred, target)
    assert s["pixel_acc"] == pytest.approx(100 * float(micro), abs=1e-4)
    mean = tm.MulticlassAccuracy(k, ignore_index=IGNORE, average="macro")(pred, target)
    assert s["mean_acc"] == pytest.approx(100 * float(mean), abs=1e-4)


# ------------------------------------------------------------------ loss and training score
def direct_ce(scores_map: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over non-ignored pixels of -log softmax at the true class, pixel by pixel."""
    up = F.interpolate(scores_map, size=target.shape[-2:], mode="bilinear",
                       align_corners=False)
    terms = []
    for b, i, j in torch.nonzero(target != IGNORE).tolist():
        terms.append(-torch.log_softmax(up[b, :, i, j], 0)[target[b, i, j]])
    return torch.stack(terms).mean()


def test_loss_upsamples_ignores_and_adds_the_aux_head():
    net = tiny_segnet()
    x = torch.randn(2, 1, 16, 16)
    _, target = random_maps(n=2, h=16, w=16)
    task = build_task("segmentation", ignore_index=IGNORE)
    out = net.features(x)
    assert out.logits.shape[-2:] == (8, 8)  # low resolution: the task upsamples
    torch.testing.assert_close(task.loss(out, target), direct_ce(out.logits, target))
    aux = torch.randn(2, 5, 4, 4, requires_grad=True)
    out.extras["aux"] = aux
    expected = direct_ce(out.logits, target) + 0.4 * direct_ce(aux, target)
    torch.testing.assert_close(task.loss(out, target), expected)
    task.loss(out, target).backward()
    assert aux.grad is not None and all(p.grad is not None for p in net.parameters())
    no_aux = type(task)(IGNORE, aux_weight=0.0)
    torch.testing.assert_close(no_aux.loss(out, target), direct_ce(out.logits, target))
    everything_ignored = torch.full_like(target, IGNORE)
    assert task.loss(out, everything_ignored).item() == 0.0


def test_train_counts_are_labelled_pixel_hits():
    task = build_task("segmentation")
    logits = torch.randn(2, 5, 6, 6)
    target = F.interpolate(logits, size=(12, 12), mode="bilinear").argmax(1)
    target[0, :3] = IGNORE
    target[1, 0, 0] = (target[1, 0, 0] + 1) % 5
    hits, total = task.train_counts(logits, target).tolist()
    assert total == 2 * 144 - 36 and hits == total - 1


# ------------------------------------------------------------------ evaluation
def batches(n_batches=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 1, size, size, generator=g),
             torch.randint(0, 5, (2, size, size), generator=g), torch.arange(2))
            for _ in range(n_batches)]


def test_evaluate_is_one_confusion_matrix_over_the_split():
    net = tiny_segnet().train()
    data = batches()
    task = build_task("segmentation")
    result = task.evaluate(net, data, device=torch.device("cpu"))
    assert net.training  # mode restored
    with torch.no_grad():
        net.eval()
        up = torch.cat([whole(net, x) for x, _, _ in data])
    target = torch.cat([y for _, y, _ in data])
    expected = scores(confusion_matrix(up.argmax(1), target, 5, IGNORE))
    for key in ("miou", "pixel_acc", "mean_acc", "pixels"):
        assert result[key] == pytest.approx(expected[key])
    assert result["loss"] == pytest.approx(F.cross_entropy(up, target).item(), rel=1e-5)
    assert task.primary in result


def test_sliding_window_covers_the_image():
    x = torch.randn(2, 1, 20, 27)
    pixelwise = tiny_segnet(stride=1, kernel=1).eval()  # no context: windows change nothing
    with torch.no_grad():
        torch.testing.assert_close(sliding(pixelwise, x, (8, 8), (5, 5)), whole(pixelwise, x))
        net = tiny_segnet().eval()
        torch.testing.assert_close(sliding(net, x, (20, 27), (20, 20)), whole(net, x))
        # a window larger than the image: padded, then cut back
        torch.testing.assert_close(sliding(pixelwise, x, (32, 32), (9, 9)), whole(pixelwise, x))
        assert sliding(net, x, (8, 12), (6, 6)).shape == (2, 5, 20, 27)
    task = build_task("segmentation")
    slide = type(task)(IGNORE, window=8, stride=5)
    data = [(x, torch.randint(0, 5, (2, 20, 27)), torch.arange(2))]
    a = slide.evaluate(pixelwise, data, device=torch.device("cpu"))
    b = task.evaluate(pixelwise, data, device=torch.device("cpu"))
    assert a["miou"] == pytest.approx(b["miou"]) and a["loss"] == pytest.approx(b["loss"])


def test_report_writes_the_prediction_grid_and_class_iou(tmp_path):
    task = build_task("segmentation")
    data = batches(n_batches=2)
    files = task.report_figures(tmp_path, {"teacher": tiny_segnet(seed=1),
                                           "student": tiny_segnet(seed=2)}, data,
                                device=torch.device("cpu"))
    assert files == ["segmentation.png", "class_iou.csv"]
    assert (tmp_path / "segmentation.png").read_bytes()[:4] == b"\x89PNG"
    rows = (tmp_path / "class_iou.csv").read_text().splitlines()
    assert rows[0] == "class,teacher,student" and len(rows) == 6


def test_the_prediction_grid_has_a_legend_of_the_classes_shown(tmp_path):
    from kdlab.data.scene_sets import SCENE_CLASSES
    from kdlab.tasks.segmentation.figures import prediction_grid

    task = build_task("segmentation", class_names=SCENE_CLASSES)
    targets = torch.zeros(2, 8, 8, dtype=torch.int64)
    targets[0, :4] = 5
    targets[1, 0, 0] = IGNORE
    pred = torch.zeros(2, 8, 8, dtype=torch.int64)
    pred[1, 4:] = 7
    legend = prediction_grid(tmp_path / "s.png", torch.randn(2, 1, 8, 8), targets,
                             {"student": pred}, IGNORE, name=task.label_name)
    assert legend == ["background", "Coat", "Shirt"]
    assert (tmp_path / "s.png").stat().st_size > 2000


def test_scenes_seg_trains_a_few_steps_through_the_task(tmp_path):
    """scenes_seg batches -> task.loss -> SGD steps: finite, the loss falls on a fixed batch,
    and evaluate / train_counts run on the loaders' targets (ignore index included)."""
    from kdlab.core.config import DataConfig
    from kdlab.data import build_loaders
    from support.data import tiny_fashion

    tiny_fashion(tmp_path)
    cfg = DataConfig(name="scenes_seg", root=str(tmp_path), download=False, canvas=32,
                     scenes_train=16, scenes_val=6, batch_size=8, eval_batch_size=3)
    loaders = build_loaders(cfg, torch.device("cpu"))
    task = build_task("segmentation", ignore_index=loaders.info.ignore_index)
    net = tiny_segnet(classes=loaders.info.num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    images, targets, _ = next(iter(loaders.train))
    assert (targets == 255).any() and targets.max() < 256
    losses = []
    for _ in range(8):
        loss = task.loss(net.features(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    hits, total = task.train_counts(net(images), targets).tolist()
    assert 0 <= hits <= total == int((targets != 255).sum())
    result = task.evaluate(net, loaders.val, device=torch.device("cpu"))
    assert result["pixels"] == 6 * 32 * 32 and 0 <= result["miou"] <= 100


def test_a_recipe_chooses_the_ignore_index_and_the_datasets_stays_left_out():
    """task_options: {ignore_index: 0}: label 0 and the dataset's 255 are both left out of the
    loss and the metrics (as if both were 255), other labels count as before."""
    from kdlab.errors import UserError

    net = tiny_segnet()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 1, 16, 16, generator=g)
    targets = torch.randint(0, 5, (2, 16, 16), generator=g)
    targets[:, :4] = IGNORE  # the dataset's padding
    both = targets.masked_fill(targets == 0, IGNORE)
    chosen = build_task("segmentation", IGNORE, num_classes=5, options={"ignore_index": 0})
    plain = build_task("segmentation", IGNORE, num_classes=5)
    out = net.features(images)
    assert chosen.ignore_index == 0 and chosen.void_index == IGNORE
    assert torch.equal(chosen.labels(targets), targets.masked_fill(targets == IGNORE, 0))
    assert torch.allclose(chosen.loss(out, targets), plain.loss(out, both))
    loader = [(images, targets)]
    got = chosen.evaluate(net, loader, device=torch.device("cpu"))
    cm = chosen.confusion(net, loader, torch.device("cpu"), "none")[0]
    assert cm[0].sum() == 0 and cm.sum() == (both != IGNORE).sum()  # neither label counted
    assert got["pixels"] == float((both != IGNORE).sum())
    with pytest.raises(UserError, match="task_options.ignore_index must be an integer"):
        build_task("segmentation", IGNORE, options={"ignore_index": "background"})
    with pytest.raises(UserError, match="Unknown task_options ignore_index"):
        build_task("classification", options={"ignore_index": 0})


def test_align_corners_is_an_option_of_the_loss_and_the_predictions():
    """CIRKD upsamples with align_corners=True everywhere (losses/task.py:14, train_kd.py:452);
    torchvision's references with False, kdlab's default."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 4, (2, 20, 28), generator=g)
    targets[:, :2] = 255
    for corners in (False, True):
        task = build_task("segmentation", options={"align_corners": corners})
        up = F.interpolate(scores, size=(20, 28), mode="bilinear", align_corners=corners)
        loss = task.loss(scores, targets)
        assert loss.dtype == torch.float64  # float64 scores stay float64 (parity runs)
        torch.testing.assert_close(loss, F.cross_entropy(up, targets, ignore_index=255))
        with torch.no_grad():  # a "network" that returns the score maps: predict upsamples
            pred = task.predict(lambda x, s=scores: s, torch.zeros(2, 3, 20, 28))
        torch.testing.assert_close(pred, up.float())
    assert not torch.allclose(
        build_task("segmentation", options={"align_corners": True}).loss(scores, targets),
        build_task("segmentation").loss(scores, targets))
