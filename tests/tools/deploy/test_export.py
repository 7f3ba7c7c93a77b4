"""`kdlab export --format onnx | torch-export`: deployable graphs of a classification, a
segmentation and a detection student, and of the composite SimKD / FCFD+SimKD students.

Tiny runs (one epoch of two steps) on real images: Fashion-MNIST (the Debian package; the
synthetic set where it is not installed) and Fashion-MNIST scenes. Each written file is read
back here without kdlab's verification code (onnxruntime's own session, torch.export.load)
and must give the restored PyTorch network's outputs on validation images; a file that fails
the check, a graph that cannot be captured and a missing extra leave no file behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kdlab.cli import main
from kdlab.cli.commands.common import restore_run
from kdlab.data import fashion_mnist as fm
from kdlab.errors import UserError
from kdlab.tasks.deploy import DeploySpec, OutputMismatch, as_outputs
from kdlab.tasks.detection.deploy import compare_detections, traceable_torchvision
from kdlab.tasks.segmentation.deploy import ScoreMaps, without_aux
from kdlab.tools.deploy.onnx_format import read_onnx_metadata
from kdlab.tools.deploy.pt2_format import load_pt2
from kdlab.tools.deploy.verify import validation_images
from kdlab.tools.deploy.write import write_verified
from support.cli import error_of, files_under, recipe

#: real images for the classification runs: the Debian package's Fashion-MNIST if installed
CLASSIFICATION_DATA = "fashion_mnist" if fm.find_files(fm.DEBIAN_DIR) else "synthetic"
SCENES = {"scenes_train": 32, "scenes_val": 16, "batch_size": 8, "eval_batch_size": 16}
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A classification network (``cls``), students distilled from it with SimKD and with
    FCFD+SimKD, a segmentation student with an auxiliary head, a detection student."""
    tmp = tmp_path_factory.mktemp("deploy")
    data = {"name": CLASSIFICATION_DATA, "train_subset": 64, "batch_size": 16}
    teacher = recipe(tmp, "cls.yaml", data=data, model={"student": "resnet8"})
    assert main(["train", str(teacher), "--out", str(tmp / "cls")]) == 0
    pair = {"student": "resnet8", "teacher": "resnet8",
            "teacher_checkpoint": str(tmp / "cls" / "best.pt")}
    for name, method in (("simkd", {"name": "simkd"}),
                         ("fcfd_simkd", {"name": "fcfd", "simkd": True})):
        path = recipe(tmp, f"{name}.yaml", data=data, method=method, model=pair)
        assert main(["distill", str(path), "--out", str(tmp / name)]) == 0
    seg = recipe(tmp, "seg.yaml", data={"name": "scenes_seg", **SCENES},
                 model={"student": "seg_resnet8", "student_options": {"aux": True}})
    seg.write_text(seg.read_text() + "task: segmentation\n")
    assert main(["train", str(seg), "--out", str(tmp / "seg")]) == 0
    det = recipe(tmp, "det.yaml", data={"name": "scenes_det", **SCENES},
                 model={"student": "frcnn_tiny_r10_slim"})
    det.write_text(det.read_text() + "task: detection\n")
    assert main(["train", str(det), "--out", str(tmp / "det")]) == 0
    return tmp


@pytest.fixture(scope="module")
def export(runs):
    """``export(run, fmt) -> (file, printed lines)``: each run exported once per format
    (4 validation images checked), the files shared by the tests below."""
    done: dict[tuple[str, str], tuple[Path, str]] = {}

    def get(run: str, fmt: str) -> tuple[Path, str]:
        if (run, fmt) not in done:
            out = runs / f"export_{run}_{fmt}" / f"net{SUFFIX[fmt]}"
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert main(["export", str(runs / run), "--format", fmt, "--images", "4",
                             "--out", str(out)]) == 0
            done[run, fmt] = out, buf.getvalue()
        return done[run, fmt]

    return get


def exported_outputs(path: Path, fmt: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The file's outputs for ``x``, read back with onnxruntime / torch.export alone."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = session.run(None, {"images": x.numpy()})
        return tuple(torch.from_numpy(np.asarray(o)) for o in outs)
    with torch.no_grad():
        return as_outputs(torch.export.load(str(path)).module()(x))


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
@pytest.mark.parametrize("run", ["cls", "seg", "det"])
def test_exported_graph_reproduces_the_student_on_validation_images(runs, export, run, fmt):
    out, printed = export(run, fmt)
    assert "checked against PyTorch: max abs difference" in printed
    assert files_under(out.parent) == {out.name}  # no temporary left
    r = restore_run(runs / run, "best", [], device="cpu")
    task = r.distiller.task
    images = validation_images(r.val, 4)
    spec = task.deploy(r.distiller.exported()["student"].eval(), tuple(images[0].shape))
    inputs = ([torch.stack(images), images[0][None]] if spec.batch is None
              else [im[None] for im in images])
    for x in inputs:
        with torch.no_grad():
            expected = as_outputs(spec.module(x))
        got = exported_outputs(out, fmt, x)
        if run == "det":
            diffs = compare_detections(spec.outputs, expected, got)
            assert diffs["boxes"] < 1e-3 and diffs["scores"] < 1e-5
            assert len(got[0]) > 0  # the untrained detector still returns boxes
        else:
            assert len(got) == 1 and got[0].shape == expected[0].shape
            torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)


def test_onnx_files_name_their_free_dimensions_and_carry_metadata(runs, export):
    import onnxruntime as ort

    shapes = {}
    for run in ("cls", "seg", "det"):
        out, _ = export(run, "onnx")
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        shapes[run] = session.get_inputs()[0].shape
        meta = read_onnx_metadata(out)
        assert meta["name"] == "student" and meta["opset"] == "18"
        assert meta["task"] == {"cls": "classification", "seg": "segmentation",
                                "det": "detection"}[run]
        assert len(json.loads(meta["mean"])) == int(meta["in_channels"])  # normalisation
    size = int(meta["input_size"])
    batch, *image = shapes["cls"]
    assert batch == "batch" and all(isinstance(d, int) for d in image)
    assert shapes["seg"] == ["batch", 1, "height", "width"]
    assert shapes["det"] == [1, 1, size, size]  # one image per call, the scenes' size


def test_segmentation_graph_runs_other_image_sizes_without_the_aux_head(runs, export):
    out, _ = export("seg", "torch-export")
    net = restore_run(runs / "seg", "best", [], load_data=False).distiller.exported()["student"]
    assert net.aux_classifier is not None
    deployed, meta = load_pt2(out)
    assert meta["outputs"] == "scores"
    x = torch.randn(3, 1, 96, 80)
    with torch.no_grad():
        expected = net.eval()(x)["out"]
        torch.testing.assert_close(deployed(x), expected, rtol=1e-5, atol=1e-5)
    assert net.aux_classifier is not None  # the deployed twin left the network whole
    graph = ScoreMaps(net)
    assert sum(p.numel() for p in graph.parameters()) < sum(p.numel() for p in net.parameters())
    assert without_aux(graph.net) is graph.net


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
@pytest.mark.parametrize("run", ["simkd", "fcfd_simkd"])
def test_composite_students_export_as_one_network(runs, export, run, fmt):
    out, printed = export(run, fmt)
    assert f"{run.split('_')[0]}(resnet8)" in printed
    r = restore_run(runs / run, "best", [], device="cpu")
    student = r.distiller.exported()["student"].eval()
    assert type(student).__name__ == "SimKDStudent"  # backbone, projector, reused head
    x = torch.stack(validation_images(r.val, 4))
    with torch.no_grad():
        got = exported_outputs(out, fmt, x)
        assert len(got) == 1
        torch.testing.assert_close(got[0], student(x), rtol=1e-4, atol=1e-4)


def test_a_failed_check_is_an_error_and_leaves_no_file(runs, capsys):
    folder = runs / "strict"
    msg = error_of(capsys, "export", str(runs / "cls"), "--format", "onnx", "--images", "2",
                   "--tolerance", "0", "--out", str(folder / "net.onnx"))
    assert "differs from the PyTorch network" in msg and "not written" in msg
    assert not folder.exists() or files_under(folder) == set()


class Branchy(nn.Module):
    """A forward that branches in Python on its input's values: torch.export refuses it."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 if float(images.sum()) > 0 else images


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_a_graph_that_cannot_be_captured_is_an_error_and_leaves_no_file(tmp_path, fmt):
    spec = DeploySpec(Branchy(), ("out",), {0: ("batch", 1)}, "images -> out")
    with pytest.raises(UserError, match="this network cannot be exported"):
        write_verified(fmt, spec, [torch.ones(1, 4, 4)] * 2, tmp_path / f"x{SUFFIX[fmt]}", {},
                       label="branchy", tolerance=1e-4)
    assert files_under(tmp_path) == set()


def test_a_missing_deploy_extra_is_one_sentence(runs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    msg = error_of(capsys, "export", str(runs / "cls"), "--format", "onnx")
    assert "pip install 'kdlab[deploy]'" in msg and "onnxruntime" in msg


def test_out_must_carry_the_formats_suffix(runs, capsys):
    msg = error_of(capsys, "export", str(runs / "cls"), "--format", "torch-export",
                   "--out", str(runs / "x.onnx"))
    assert "must end in .pt2" in msg


# --------------------------------------------------------------- detections, torchvision
def _dets(boxes, scores, labels):
    return (torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores),
            torch.tensor(labels))


def test_detections_are_paired_by_label_and_box_not_by_order():
    ref = _dets([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 9, 9]], [0.9, 0.5, 0.5], [1, 2, 1])
    got = _dets([[1, 1, 9, 9.001], [0, 0, 10, 10], [5, 5, 20, 20]], [0.5, 0.9, 0.5], [1, 1, 2])
    diffs = compare_detections(("boxes", "scores", "labels"), ref, got)
    assert diffs["boxes"] == pytest.approx(0.001, abs=1e-5) and diffs["scores"] == 0.0
    with pytest.raises(OutputMismatch, match="2 detections instead of 3"):
        compare_detections(("boxes", "scores", "labels"), ref, tuple(t[:2] for t in got))
    other = _dets([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 9, 9]], [0.9, 0.5, 0.5], [1, 2, 3])
    with pytest.raises(OutputMismatch, match="has no partner"):
        compare_detections(("boxes", "scores", "labels"), ref, other)


def test_traceable_torchvision_keeps_the_kept_boxes_and_puts_the_originals_back():
    import torchvision.ops.boxes as box_ops
    import torchvision.ops.poolers as poolers

    before = box_ops.batched_nms, poolers._multiscale_roi_align
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=g) * 20], dim=1)
    scores, idxs = torch.rand(60, generator=g), torch.randint(0, 3, (60,), generator=g)
    expected = box_ops.batched_nms(boxes, scores, idxs, 0.5)
    with traceable_torchvision():
        assert box_ops.batched_nms is not before[0]
        assert torch.equal(box_ops.batched_nms(boxes, scores, idxs, 0.5), expected)
        assert box_ops.batched_nms(boxes[:0], scores[:0], idxs[:0], 0.5).numel() == 0
    assert (box_ops.batched_nms, poolers._multiscale_roi_align) == before
