"""`kdlab analyze`: FCFD's function anisotropy (Sec. 1) and exit-branch probe (Sec. 3.4,
App. A.2).

The anisotropy numbers are checked against a direct, one-image-one-direction computation
and for the properties they must have (no move, no change; a longer move, a larger change;
the most sensitive direction costs at least as much accuracy as the least sensitive). The
probe is checked on tiny runs: a teacher probed with its own features scores exactly the
branches' accuracy, an FCFD student is fed through its bridges, branches are cached.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_staged
from kdlab.cli import main
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.tools.analysis.anisotropy import (
    kl_per_sample,
    measure_anisotropy,
    random_directions,
)
from kdlab.tools.analysis.exit_branch import (
    branch_accuracy,
    build_exit_branch,
    milestones,
    recalibrate,
    stage_feature,
    train_exit_branch,
)
from kdlab.tools.analysis.probe import AS_IS, BRIDGED, REGRESSOR, student_feed, teacher_feed
from support.cli import error_of, recipe

SMALL_DATA = {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64,
              "train_subset": 128, "val_subset": 64}


def _batches(n: int = 2, size: int = 8, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 16, 16, generator=g), torch.randint(0, 10, (size,),
                                                                          generator=g))
            for _ in range(n)]


# --------------------------------------------------------------------- anisotropy (library)
def test_kl_per_sample_is_the_formula():
    before, after = torch.randn(5, 7), torch.randn(5, 7)
    for i in range(5):
        p, q = before[i].softmax(0), after[i].softmax(0)
        direct = sum(p[j] * math.log(p[j] / q[j]) for j in range(7))
        assert kl_per_sample(before, after)[i].item() == pytest.approx(float(direct), abs=1e-6)


def test_directions_are_unit_and_do_not_depend_on_chunking():
    whole = random_directions(6, (2, 3, 3), seed=3)
    parts = torch.cat([random_directions(4, (2, 3, 3), seed=3),
                       random_directions(2, (2, 3, 3), seed=3, first=4)])
    assert torch.equal(whole, parts)
    assert torch.allclose(whole.flatten(1).norm(dim=1), torch.ones(6))
    assert not torch.equal(whole, random_directions(6, (2, 3, 3), seed=4))


@pytest.mark.parametrize("keep", [True, False])
def test_anisotropy_matches_a_direct_computation(monkeypatch, keep):
    """Every (image, direction) KL and prediction, one at a time, against the batched
    measurement (small pass budget: several direction chunks per batch; the directions kept
    across batches or drawn again for each)."""
    import kdlab.tools.analysis.anisotropy as mod

    monkeypatch.setattr(mod, "PASS_BUDGET", 20)
    monkeypatch.setattr(mod, "KEEP_ELEMENTS", mod.KEEP_ELEMENTS if keep else 0)
    net, stage, d, n_dir = tiny_staged().double().eval(), 2, 100.0, 7
    batches = [(x.double(), y) for x, y in _batches()]
    res = measure_anisotropy(net, batches, stage=stage, distance=d, directions=n_dir, seed=5)
    u = random_directions(n_dir, tuple(net.stage_info[stage - 1].shape), seed=5,
                          dtype=torch.float64)
    kls, clean, most, least = [], 0, 0, 0
    with torch.no_grad():
        for images, targets in batches:
            for x, y in zip(images, targets):
                f = net.features(x[None])
                row = []
                for j in range(n_dir):
                    after = net.run_from(stage - 1, f.stages[stage - 1] + d * u[j]).logits
                    p, q = F.log_softmax(f.logits, 1), F.log_softmax(after, 1)
                    row.append(((p.exp() * (p - q)).sum().item(), int(after.argmax()) == int(y)))
                kls.append([k for k, _ in row])
                clean += int(f.logits.argmax()) == int(y)
                most += max(row, key=lambda r: r[0])[1]
                least += min(row, key=lambda r: r[0])[1]
    n = len(kls)
    per_direction = [sum(r[j] for r in kls) / n for j in range(n_dir)]
    assert res.images == n and res.directions == n_dir
    assert min(per_direction) > 1e-4  # a move that changes the output
    assert res.direction_kl == pytest.approx(per_direction, rel=1e-9)
    assert res.kl_max == pytest.approx(max(per_direction), rel=1e-9)
    assert res.kl_min == pytest.approx(min(per_direction), rel=1e-9)
    assert res.sample_kl_max == pytest.approx(sum(max(r) for r in kls) / n, rel=1e-9)
    assert res.sample_kl_min == pytest.approx(sum(min(r) for r in kls) / n, rel=1e-9)
    assert res.accuracy == pytest.approx(100 * clean / n)
    assert res.accuracy_most == pytest.approx(100 * most / n)
    assert res.accuracy_least == pytest.approx(100 * least / n)


def test_no_move_no_change_and_a_longer_move_changes_more():
    net, batches = tiny_staged(), _batches()
    zero = measure_anisotropy(net, batches, stage=3, distance=0.0, directions=8)
    assert max(abs(v) for v in zero.direction_kl) < 1e-6
    assert zero.accuracy_most == zero.accuracy_least == zero.accuracy
    means = [measure_anisotropy(net, batches, stage=3, distance=d, directions=8).kl_mean
             for d in (0.5, 2.0, 8.0)]
    assert 0 < means[0] < means[1] < means[2]
    far = measure_anisotropy(net, batches, stage=3, distance=8.0, directions=16)
    assert far.sample_kl_max >= far.kl_max >= far.kl_mean >= far.kl_min >= far.sample_kl_min
    assert far.drop_most >= far.drop_least
    assert far.distance == 8.0 and far.feature_shape == list(net.stage_info[2].shape)


def test_default_distance_is_relative_to_the_feature_norm():
    net, batches = tiny_staged(), _batches()
    with torch.no_grad():
        norm = net.eval().features(batches[0][0]).stages[1].flatten(1).norm(dim=1).mean()
    res = measure_anisotropy(net, batches[:1], stage=2, directions=2)
    assert res.distance == pytest.approx(norm.item(), rel=1e-5)
    assert res.relative_distance == pytest.approx(1.0, rel=1e-5)
    half = measure_anisotropy(net, batches[:1], stage=2, directions=2, relative=0.5)
    assert half.distance == pytest.approx(0.5 * norm.item(), rel=1e-5)
    assert half.kl_mean < res.kl_mean


@pytest.mark.parametrize("stage", [0, 5])
def test_stage_out_of_range(stage):
    with pytest.raises(UserError, match="out of range"):
        measure_anisotropy(tiny_staged(), _batches(1), stage=stage, distance=1.0, directions=2)


# --------------------------------------------------------------------- exit branches (library)
def test_branch_milestones_keep_the_papers_fractions():
    assert milestones(240) == [150, 180, 210]
    assert milestones(8) == [5, 6, 7]
    assert milestones(1) == []


def test_exit_branch_reads_the_teacher_feature_and_adapts_other_shapes(tiny_pair):
    teacher, student = tiny_pair
    info = type("Info", (), {"num_classes": 10, "in_channels": 3, "input_size": 16})
    own = build_exit_branch(teacher, 2, "resnet8", info)  # resnet8's stage 2 is 16x16x16
    x = torch.randn(4, 3, 16, 16)
    assert own(stage_feature(teacher, x, 2)).shape == (4, 10)
    assert not isinstance(own.adapter, torch.nn.Identity)  # teacher stage 2 is 32x8x8
    with pytest.raises(UserError, match="exit branches go after stages 1..3"):
        build_exit_branch(teacher, 4, "resnet8", info)


def test_branch_training_changes_only_the_branchs_later_part(tiny_pair):
    """The frozen teacher and the branch's unused earlier stages keep their weights and
    statistics; the adapter, later stages and head learn."""
    teacher, _ = tiny_pair
    teacher.eval()
    info = type("Info", (), {"num_classes": 10, "in_channels": 3, "input_size": 16})
    branch = build_exit_branch(teacher, 2, "resnet8", info)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_b = {k: v.clone() for k, v in branch.state_dict().items()}
    train_exit_branch(branch, teacher_feed(teacher, 2), _batches(3), epochs=2,
                      device=torch.device("cpu"), progress="none")
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_t.items())
    assert all(p.grad is None for p in teacher.parameters())
    after = branch.state_dict()
    earlier = [k for k in before_b if k.startswith(("net.net.conv1", "net.net.bn1",
                                                    "net.net.layer1."))]
    later = [k for k in before_b if k.startswith(("net.net.layer2.", "net.net.layer3.",
                                                  "net.net.fc", "adapter."))]
    assert earlier and later
    assert all(torch.equal(before_b[k], after[k]) for k in earlier)
    assert all(not torch.equal(before_b[k], after[k]) for k in later
               if k.endswith("weight"))
    assert not branch.training


def test_recalibration_recomputes_the_statistics_on_the_given_features(tiny_pair):
    teacher, _ = tiny_pair
    info = type("Info", (), {"num_classes": 10, "in_channels": 3, "input_size": 16})
    branch = build_exit_branch(teacher, 2, "resnet8", info).eval()
    feed = teacher_feed(teacher.eval(), 2)
    batches = _batches(3)
    fresh = recalibrate(branch, feed, batches, torch.device("cpu"))
    bn = fresh.adapter[1]
    with torch.no_grad():
        feats = torch.cat([branch.adapter[0](feed(x)) for x, _ in batches])
    assert torch.allclose(bn.running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == branch.adapter[1].momentum  # restored
    assert not torch.equal(branch.adapter[1].running_mean, bn.running_mean)  # a copy
    acc = branch_accuracy(fresh, feed, batches, torch.device("cpu"))
    assert 0.0 <= acc <= 100.0


def test_recalibration_rewinds_an_epoch_loader(tiny_pair):
    """The statistics do not depend on the loader's epoch left by what ran before (a branch
    just trained, or read from the cache)."""
    teacher, _ = tiny_pair
    info = type("Info", (), {"num_classes": 10, "in_channels": 3, "input_size": 16})
    branch = build_exit_branch(teacher, 2, "resnet8", info).eval()
    feed = teacher_feed(teacher.eval(), 2)

    class EpochBatches:
        def __init__(self) -> None:
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            return iter(_batches(2, seed=self.epoch))

    loader = EpochBatches()
    first = recalibrate(branch, feed, loader, torch.device("cpu")).adapter[1].running_mean
    loader.set_epoch(3)
    again = recalibrate(branch, feed, loader, torch.device("cpu")).adapter[1].running_mean
    assert torch.equal(first, again)


def test_student_feed_uses_the_bridge_else_the_shape(tiny_pair):
    teacher, student = tiny_pair
    fcfd = METHODS.get("fcfd")(student, teacher)
    feed, how = student_feed(fcfd, teacher, 2)
    x = torch.randn(2, 3, 16, 16)
    assert how == BRIDGED
    assert feed(x).shape == stage_feature(teacher, x, 2).shape
    kd = METHODS.get("kd")(student, teacher)
    feed, how = student_feed(kd, teacher, 2)
    assert feed is None and "not shaped like the teacher's" in how
    same = METHODS.get("kd")(teacher, teacher)
    assert student_feed(same, teacher, 3)[1] == AS_IS
    fitnet = METHODS.get("fitnet")(student, teacher)  # hint at stage 3
    feed, how = student_feed(fitnet, teacher, 3)
    assert how == REGRESSOR and feed(x).shape == stage_feature(teacher, x, 3).shape
    assert student_feed(fitnet, teacher, 2)[0] is None
    combo = METHODS.get("combo")(student, teacher, METHODS.get("combo").Config(
        parts=[{"name": "kd"}, {"name": "fitnet", "position": 2}]))
    assert student_feed(combo, teacher, 2)[1] == REGRESSOR


# --------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A resnet8 teacher (a few steps on synthetic data) and an FCFD student of it."""
    tmp = tmp_path_factory.mktemp("analyze")
    train = {"device": "cpu", "max_steps_per_epoch": 4, "progress": "none"}
    teacher = recipe(tmp, "teacher.yaml", data=SMALL_DATA, train=train,
                     schedule={"name": "constant", "epochs": 2})
    assert main(["train", str(teacher), "--out", str(tmp / "teacher")]) == 0
    fcfd = recipe(tmp, "fcfd.yaml", data=SMALL_DATA, train=train, method={"name": "fcfd"},
                  model={"student": "resnet8", "teacher": "resnet8",
                         "teacher_checkpoint": str(tmp / "teacher" / "best.pt")})
    assert main(["distill", str(fcfd), "--out", str(tmp / "fcfd")]) == 0
    return tmp


def test_anisotropy_command_writes_json_and_plot(runs, capsys):
    run = runs / "teacher"
    assert main(["analyze", "anisotropy", str(run), "--stage", "2", "--directions", "8",
                 "--distance", "20", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "most sensitive" in out and "KL mean" in out
    record = json.loads((run / "analysis" / "anisotropy.json").read_text())
    assert record["stage"] == 2 and record["distance"] == 20.0 and record["images"] == 64
    assert len(record["direction_kl"]) == 8 and record["model"] == "resnet8"
    assert record["kl_min"] <= record["kl_mean"] <= record["kl_max"]
    assert record["drop_most"] >= record["drop_least"]
    assert (run / "analysis" / "anisotropy.png").stat().st_size > 1000


def test_anisotropy_command_next_to_a_checkpoint_and_errors(runs, tmp_path, capsys):
    ckpt = tmp_path / "copy" / "net.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((runs / "teacher" / "best.pt").read_bytes())
    (ckpt.parent / "config.yaml").write_bytes((runs / "teacher" / "config.yaml").read_bytes())
    assert main(["analyze", "anisotropy", str(ckpt), "--directions", "2", "--batches",
                 "1"]) == 0
    assert json.loads((ckpt.parent / "analysis" / "anisotropy.json").read_text())["stage"] == 3
    assert "out of range" in error_of(capsys, "analyze", "anisotropy", str(runs / "teacher"),
                                      "--stage", "9")
    assert "does not exist" in error_of(capsys, "analyze", "anisotropy", str(tmp_path / "no"))
    seg = (ckpt.parent / "config.yaml").read_text().replace("task: classification",
                                                             "task: segmentation")
    (ckpt.parent / "config.yaml").write_text(seg)
    assert "needs a classification run" in error_of(capsys, "analyze", "anisotropy", str(ckpt))


def test_probe_command(runs, capsys):
    teacher, fcfd = runs / "teacher", runs / "fcfd"
    args = ["analyze", "probe", str(teacher), str(fcfd), str(teacher), "--epochs", "1",
            "--progress", "none", "--no-recalibrate"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "reused from the cache" not in captured.out
    assert "note:" not in captured.err  # the student names this teacher's checkpoint
    record = json.loads((teacher / "analysis" / "probe.json").read_text())
    assert record["positions"] == [2, 3] and record["branch"]["epochs"] == 1
    branch = record["branch"]["accuracy"]
    own = record["students"][1]
    assert own["feed"] == {"2": AS_IS, "3": AS_IS}
    assert own["accuracy"] == branch  # the teacher's own features: the branches' accuracy
    student = record["students"][0]
    assert student["method"] == "fcfd" and student["feed"] == {"2": BRIDGED, "3": BRIDGED}
    assert all(0.0 <= v <= 100.0 for v in student["accuracy"].values())
    assert (teacher / "analysis" / "probe.png").stat().st_size > 1000
    cache = sorted((teacher / "analysis" / "exit_branches").iterdir())
    assert [p.name for p in cache] == ["k2-resnet8-e1.pt", "k3-resnet8-e1.pt"]
    stamps = [os.stat(p).st_mtime_ns for p in cache]
    assert main(args[:5] + ["--epochs", "1", "--progress", "none"]) == 0  # recalibrated
    assert "exit branches at stage(s) 2, 3 reused from the cache" in capsys.readouterr().out
    assert [os.stat(p).st_mtime_ns for p in cache] == stamps
    again = json.loads((teacher / "analysis" / "probe.json").read_text())
    assert again["branch"]["accuracy"] == branch and again["recalibrated"] is True


def test_probe_errors(runs, capsys):
    teacher = str(runs / "teacher")
    assert "exit branches go after stages 1..3" in error_of(
        capsys, "analyze", "probe", teacher, teacher, "--positions", "2,4")
    assert "not a list of stage numbers" in error_of(
        capsys, "analyze", "probe", teacher, teacher, "--positions", "two")
    assert "--epochs must be at least 1" in error_of(
        capsys, "analyze", "probe", teacher, teacher, "--epochs", "0")
    assert "--batches must be at least 1" in error_of(
        capsys, "analyze", "anisotropy", teacher, "--batches", "0")
    assert "--directions must be at least 1" in error_of(
        capsys, "analyze", "anisotropy", teacher, "--directions", "0")


def test_a_student_of_another_teacher_checkpoint_gets_a_note(tmp_path):
    from types import SimpleNamespace

    from kdlab.cli.commands.analyze import _teacher_note

    def run(ckpt, teacher_ckpt=None):  # the two fields _teacher_note reads
        model = SimpleNamespace(teacher_checkpoint=teacher_ckpt)
        return SimpleNamespace(ckpt_path=ckpt, cfg=SimpleNamespace(model=model))

    teacher = run(tmp_path / "teacher" / "best.pt")
    assert _teacher_note(run(tmp_path / "s.pt", str(tmp_path / "teacher" / "best.pt")),
                         teacher) is None
    assert _teacher_note(run(tmp_path / "s.pt"), teacher) is None  # not distilled
    note = _teacher_note(run(tmp_path / "s.pt", str(tmp_path / "other.pt")), teacher)
    assert note is not None and "other.pt" in note
