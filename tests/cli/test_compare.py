"""kdlab compare: runs side by side (Markdown, CSV, PNG) from each run's config.yaml and
metrics.csv; the primary metric follows the run's task; a folder that is not a run is one
clear error."""

from __future__ import annotations

import csv

import yaml

from kdlab.cli import main
from kdlab.training.metrics_log import write_csv


def _run(folder, task, method, metric, values, teacher=None, rate=800.0, batch=16):
    folder.mkdir(parents=True)
    cfg = {"method": {"name": method}, "data": {"batch_size": batch},
           "model": {"student": "resnet8", "teacher": teacher}}
    if task:
        cfg["task"] = task
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"epoch": i + 1, "lr": 0.05, "loss": 1.0, f"val_student_{metric}": v,
             "epoch_seconds": 2.0, "images_per_s": rate} for i, v in enumerate(values)]
    write_csv(folder / "metrics.csv", rows)
    return folder


def test_compare_writes_the_table_and_the_plot(tmp_path, capsys):
    kd = _run(tmp_path / "kd", None, "kd", "top1", [50.0, 61.5, 60.25], teacher="resnet32x4")
    ce = _run(tmp_path / "ce", "classification", "ce", "top1", [40.0, 55.0], rate=1600.0)
    seg = _run(tmp_path / "seg", "segmentation", "skd", "miou", [10.0, 30.5, 20.0])
    out = tmp_path / "cmp"
    assert main(["compare", str(kd), str(ce), str(seg), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("| kd | kd | resnet8 | resnet32x4 | classification | 61.50 top-1 | 60.25 top-1 | 3 "
            "| 20.0 | 800 | 6.0 |") in text
    assert "30.50 mIoU" in text and "20.00 mIoU" in text
    with open(out / "compare.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["kd"]["best"]) == 61.5 and float(rows["kd"]["last"]) == 60.25
    assert float(rows["ce"]["step_ms"]) == 10.0  # 16 images at 1600 images/s
    assert float(rows["kd"]["wall_s"]) == 6.0 and rows["seg"]["metric"] == "miou"
    assert rows["ce"]["teacher"] == "-" and int(rows["seg"]["epochs"]) == 3
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "compare.md").read_text() == text.split("-> ")[0]


def test_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "is not a kdlab run folder (it has no metrics.csv)" in capsys.readouterr().err
