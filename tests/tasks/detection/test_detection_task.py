"""The detection task: its loss, COCO evaluation (checked against torchmetrics), gathering over
ranks, and the report picture."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.tasks import build_task
from kdlab.tasks.detection.coco_map import coco_map
from kdlab.tasks.detection.task import det_rows, gt_rows
from support.detection import scenes, tiny, tiny_pair

TASK = build_task("detection")
WORLD = 2


def synthetic(n_images: int = 6, seed: int = 0):
    """Ground truth over three classes and all COCO size ranges (one crowd region), and
    detections: jittered copies of most boxes, some with the wrong class, plus false alarms."""
    g = torch.Generator().manual_seed(seed)
    targets, preds = [], []
    for i in range(n_images):
        n = 2 + i % 3
        size = torch.tensor([12.0, 40.0, 150.0])[torch.randint(0, 3, (n,), generator=g)]
        xy = torch.rand(n, 2, generator=g) * 200
        boxes = torch.cat([xy, xy + size[:, None] * (0.6 + 0.8 * torch.rand(n, 2, generator=g))],
                          dim=1)
        labels = torch.randint(1, 4, (n,), generator=g)
        crowd = torch.zeros(n, dtype=torch.int64)
        if i == 1:
            crowd[0] = 1
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": crowd})
        keep = torch.rand(n, generator=g) > 0.2
        jitter = boxes[keep] + 4 * torch.randn(int(keep.sum()), 4, generator=g)
        wrong = labels[keep].clone()
        wrong[torch.rand(len(wrong), generator=g) > 0.8] = 2
        fa = torch.rand(2, 2, generator=g) * 200
        fa = torch.cat([fa, fa + 30], dim=1)
        preds.append({"boxes": torch.cat([jitter, fa]),
                      "scores": torch.rand(len(jitter) + 2, generator=g),
                      "labels": torch.cat([wrong, torch.randint(1, 4, (2,), generator=g)])})
    return targets, preds


def test_coco_map_matches_torchmetrics():
    from torchmetrics.detection import MeanAveragePrecision

    targets, preds = synthetic()
    ids = list(range(len(targets)))
    ours = coco_map(gt_rows(targets, ids), det_rows(preds, ids), torch.tensor(ids))
    metric = MeanAveragePrecision(iou_type="bbox")
    metric.update(preds, targets)
    ref = metric.compute()
    names = {"map": "map", "ap50": "map_50", "ap75": "map_75", "ap_small": "map_small",
             "ap_medium": "map_medium", "ap_large": "map_large"}
    assert 5 < ours["map"] < 95
    for k, r in names.items():
        want = 100 * float(ref[r])
        assert ours[k] == pytest.approx(want, abs=1e-6), k


def test_coco_map_of_perfect_and_of_no_detections():
    targets, _ = synthetic(seed=1)
    ids = list(range(len(targets)))
    perfect = [{"boxes": t["boxes"], "scores": torch.ones(len(t["labels"])),
                "labels": t["labels"]} for t in targets]
    gt = gt_rows(targets, ids)
    assert coco_map(gt, det_rows(perfect, ids), torch.tensor(ids))["map"] == pytest.approx(100)
    none = coco_map(gt, torch.zeros(0, 7), torch.tensor(ids))
    assert none["map"] == 0.0 and none["ap50"] == 0.0
    assert all(math.isnan(v) for v in coco_map(torch.zeros(0, 8), torch.zeros(0, 7),
                                               torch.tensor(ids)).values())


class Replay(nn.Module):
    """A stand-in detector that returns stored detections, one image at a time."""

    def __init__(self, preds: dict[int, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.preds = preds

    def forward(self, images):
        return [self.preds[int(im[0, 0, 0])] for im in images]


def _loader(targets, indices, batch=2):
    """Batches (images whose first pixel is their index, targets, index)."""
    out = []
    for a in range(0, len(indices), batch):
        idx = indices[a:a + batch]
        images = torch.zeros(len(idx), 1, 8, 8)
        images[:, 0, 0, 0] = torch.tensor(idx, dtype=torch.float32)
        out.append((images, [targets[i] for i in idx], torch.tensor(idx)))
    return out


def test_evaluate_runs_the_network_over_the_loader():
    targets, preds = synthetic()
    ids = list(range(len(targets)))
    net = Replay(dict(enumerate(preds)))
    got = TASK.evaluate(net, _loader(targets, ids), device=torch.device("cpu"))
    want = coco_map(gt_rows(targets, ids), det_rows(preds, ids), torch.tensor(ids))
    assert got["images"] == len(ids)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, nan_ok=True)
    assert TASK.primary in got and TASK.batch_size(targets) == len(targets)


def test_evaluation_gathers_every_rank(monkeypatch):
    """Rank 0 of two: its own shard's rows and rank 1's (what ``all_gather_rows`` returns
    there) are evaluated together, so every rank reports the metrics of the whole split."""
    import kdlab.tasks.detection.task as detection

    targets, preds = synthetic()
    net = Replay(dict(enumerate(preds)))
    shards = [list(range(r, len(targets), WORLD)) for r in range(WORLD)]  # validation shards
    other = TASK.predict(net, _loader(targets, shards[1]), device=torch.device("cpu"))
    other = (other[0], other[1], other[2][:, None])
    calls = []

    def gather(x):
        calls.append(tuple(x.shape))
        mine = {8: 0, 7: 1, 1: 2}[x.shape[1]]
        return [(x,), (other[mine],)]

    monkeypatch.setattr(detection, "world_size", lambda: WORLD)
    monkeypatch.setattr(detection, "all_gather_rows", gather)
    got = TASK.evaluate(net, _loader(targets, shards[0]), device=torch.device("cpu"))
    assert [c[1] for c in calls] == [8, 7, 1]
    calls.clear()
    nothing = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
               "labels": torch.zeros(0, dtype=torch.int64)}
    TASK.evaluate(Replay(dict.fromkeys(range(len(targets)), nothing)),
                  _loader(targets, shards[0]), device=torch.device("cpu"))
    assert calls[1] == (1, 7)  # no detections here: one placeholder row, never an empty gather
    ids = list(range(len(targets)))
    want = coco_map(gt_rows(targets, ids), det_rows(preds, ids), torch.tensor(ids))
    assert got["images"] == len(ids)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, nan_ok=True), k


def test_the_task_loss_is_the_sum_of_the_detector_losses():
    det = tiny().train()
    x, targets = scenes()
    out = TASK.features(det, x, targets)
    assert TASK.loss(out, targets).item() == pytest.approx(
        sum(v.item() for v in out.losses.values()))


def test_a_classification_network_is_no_detector(tiny_pair):
    from kdlab.errors import UserError

    x, targets = scenes()
    with pytest.raises(UserError, match="not a detector"):
        TASK.features(tiny_pair[1], x, targets)


def test_report_figure_shows_ground_truth_teacher_and_student(tmp_path):
    teacher, student = tiny_pair()
    x, targets = scenes(batch=3)
    names = TASK.report_figures(tmp_path, {"teacher": teacher, "student": student},
                                [(x, targets, torch.arange(3))], device=torch.device("cpu"))
    assert names == ["detections.png"]
    assert (tmp_path / "detections.png").stat().st_size > 5000
    assert teacher.training and student.training  # modes are restored


def test_the_detection_picture_names_classes_and_scores_above_the_threshold(tmp_path):
    from kdlab.data.scene_sets import SCENE_CLASSES
    from kdlab.tasks.detection.figures import draw_detections

    x, targets = scenes(batch=2)
    fake = [{"boxes": torch.tensor([[2.0, 2, 20, 20], [5, 5, 30, 30]]),
             "labels": torch.tensor([5, 7]), "scores": torch.tensor([0.87, 0.31])}] * 2
    task = build_task("detection", class_names=SCENE_CLASSES)
    drawn = draw_detections(tmp_path / "d.png", list(x), targets,
                            {"teacher": fake, "student": fake[:1] * 2}, min_score=0.5,
                            name=task.label_name)
    assert list(drawn) == ["ground truth", "teacher (score >= 0.5)", "student (score >= 0.5)"]
    assert drawn["teacher (score >= 0.5)"] == ["Coat 0.87"] * 2  # 0.31 is below the threshold
    truth = [SCENE_CLASSES[int(v)] for t in targets for v in t["labels"]]
    assert drawn["ground truth"] == truth and (tmp_path / "d.png").stat().st_size > 5000
    assert build_task("detection").label_name(3) == "3"  # no names known: the number
