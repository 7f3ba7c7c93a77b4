"""The teacher soft-label cache (``kdlab cache-teacher``, ``data.teacher_cache``): the stored
outputs are the teacher's on the stored views bit for bit, the student gets exactly those
views, mismatched caches are refused in one sentence, an interrupted build continues, and KD /
DKD train from the cache without running the teacher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from kdlab.cli import main
from kdlab.core.config import RunConfig, build_dataclass
from kdlab.data import build_loaders
from kdlab.data.augment import normalise
from kdlab.data.soft_labels import (
    CachedTeacher,
    TeacherCache,
    checksums,
    meta_path,
    outputs_to_logits,
    partial_paths,
)
from kdlab.errors import UserError
from kdlab.models import build_model
from kdlab.tasks.classification.datasets.synthetic import Synthetic
from kdlab.tools.teacher_cache import build_teacher_cache
from kdlab.training import build as build_module
from kdlab.training.build import build_teacher
from kdlab.training.trainer import Trainer

N = 48  # training images of the tiny runs


def teacher_file(folder: Path, seed: int = 0) -> Path:
    """A resnet8 teacher for the synthetic data (random weights) as a .safetensors file."""
    torch.manual_seed(seed)
    net = build_model("resnet8", num_classes=10, in_channels=3, input_size=16).net
    path = folder / f"teacher{seed}.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(net.state_dict(), str(path))
    return path


def config(tmp_path: Path, teacher: Path, **sections: dict) -> RunConfig:
    tree: dict = {
        "data": {"name": "synthetic", "batch_size": 16, "eval_batch_size": 64,
                 "train_subset": N, "val_subset": 32},
        "model": {"student": "resnet8", "teacher": "resnet8",
                  "teacher_checkpoint": str(teacher)},
        "method": {"name": "kd"},
        "optim": {"lr": 0.05},
        "schedule": {"name": "constant", "epochs": 2},
        "train": {"device": "cpu", "progress": "none", "out_dir": str(tmp_path / "run"),
                  "max_steps_per_epoch": 2},
    }
    for key, values in sections.items():
        tree[key] = {**tree.get(key, {}), **values}
    return build_dataclass(RunConfig, tree, where="config")


@pytest.fixture
def cached(tmp_path):
    """(config, cache path): a K=3 cache of the synthetic subset, built in one forward."""
    cfg = config(tmp_path, teacher_file(tmp_path / "t"))
    path, _ = build_teacher_cache(cfg, views=3, batch=3 * N, progress="none")
    cfg.data.teacher_cache = str(path)
    return cfg, path


def train_images(cfg: RunConfig) -> torch.Tensor:
    (xt, _), _ = Synthetic().load(cfg.data)
    return xt[:N]


def stored_views(images: torch.Tensor, params: np.ndarray) -> torch.Tensor:
    """The normalised views that ``params`` (N, K, 3) describe, image-major: (N * K, C, H, W)."""
    src = Synthetic()
    p = torch.from_numpy(params.astype(np.int64)).reshape(-1, params.shape[-1])
    x = src.augmentation.apply(images.repeat_interleave(params.shape[1], 0), tuple(p.unbind(-1)))
    return normalise(x, src.info.mean, src.info.std, src.scale)


# --------------------------------------------------------------- what is stored
def test_cached_logits_are_the_teachers_on_the_stored_views_bit_for_bit(cached):
    cfg, path = cached
    cache = TeacherCache.open(path)
    assert (cache.n, cache.views, cache.num_classes) == (N, 3, 10)
    params = np.asarray(cache.arrays["params"])
    # synthetic: 1-pixel padding, no flip: the 9 offsets, all drawn
    assert params.shape == (N, 3, 3) and len({tuple(r) for r in params.reshape(-1, 3)}) == 9
    teacher = build_teacher(cfg, Synthetic.info).eval()
    with torch.inference_mode():  # the same views in the same single forward as the build
        expected = teacher(stored_views(train_images(cfg), params)).half().view(N, 3, 10)
    stored = torch.from_numpy(np.array(cache.arrays["logits"]))
    assert stored.dtype == torch.float16
    assert torch.equal(stored.view(torch.int16), expected.view(torch.int16))
    index, view = np.array([0, 7, 47]), np.array([2, 0, 1])
    assert torch.equal(cache.logits(index, view), expected[index, view].float())


def test_topk_outputs_keep_the_teachers_top_probabilities(tmp_path):
    cfg = config(tmp_path, teacher_file(tmp_path / "t"))
    path, meta = build_teacher_cache(cfg, views=2, output="topk", topk=3, batch=2 * N,
                                     progress="none")
    full, _ = build_teacher_cache(cfg, views=2, batch=2 * N, progress="none")
    assert meta["output"] == {"format": "topk", "topk": 3}
    top, exact = TeacherCache.open(path), TeacherCache.open(full)
    index, view = np.arange(N), np.arange(N) % 2
    p_teacher = F.softmax(exact.logits(index, view), -1)
    p_cache = F.softmax(top.logits(index, view), -1)
    values, classes = p_teacher.topk(3, -1)
    assert torch.allclose(p_cache.gather(-1, classes), values, atol=2e-3)
    rest = (1 - values.sum(-1, keepdim=True)) / 7  # the remaining mass, shared evenly
    others = torch.ones_like(p_cache, dtype=torch.bool).scatter_(-1, classes, False)
    assert torch.allclose(p_cache[others].view(N, 7), rest.expand(N, 7), atol=2e-3)


def test_outputs_to_logits_against_the_formula():
    probs = np.array([[0.5, 0.3]], dtype=np.float16)
    classes = np.array([[2, 0]], dtype=np.int16)
    logits = outputs_to_logits({"probs": probs, "classes": classes}, 4)
    share = (1 - 0.5 - 0.3) / 2
    want = torch.tensor([[0.3, share, 0.5, share]]).log()
    assert torch.allclose(logits, want, atol=1e-3)
    tau = 4.0  # at a temperature the top-k ratios are those of the teacher's softmax
    p = F.softmax(logits / tau, -1)
    assert torch.allclose(p[0, 2] / p[0, 0], torch.tensor((0.5 / 0.3) ** (1 / tau)), atol=1e-3)


# --------------------------------------------------------------- the student's views
def test_the_student_gets_exactly_the_cached_view_and_the_views_change_by_epoch(cached):
    cfg, path = cached
    cache = TeacherCache.open(path)
    params = np.asarray(cache.arrays["params"])
    views = stored_views(train_images(cfg), params).view(N, 3, 3, 16, 16)
    teacher = build_teacher(cfg, Synthetic.info).eval()
    picked = []
    for epoch in (0, 1):
        loaders = build_loaders(cfg.data, torch.device("cpu"), seed=5)
        loaders.train.set_epoch(epoch)
        source = loaders.teacher_cache
        assert isinstance(source, CachedTeacher)
        chosen = source._views.copy()
        picked.append(chosen)
        for images, _, index in loaders.train:
            assert torch.equal(images, views[index, torch.from_numpy(chosen[index.numpy()])])
            with torch.inference_mode():  # the teacher on the student's batch: within fp16
                online = teacher(images)
            assert torch.allclose(source.logits(index), online, atol=2e-3, rtol=2e-3)
    assert not np.array_equal(picked[0], picked[1])
    again = build_loaders(cfg.data, torch.device("cpu"), seed=5).teacher_cache
    again.set_epoch(1)
    assert np.array_equal(again._views, picked[1])  # a function of (seed, epoch) only


# --------------------------------------------------------------- refusals
def test_a_cache_of_another_teacher_data_or_augmentation_is_refused(cached, tmp_path):
    cfg, path = cached
    other = teacher_file(tmp_path / "t2", seed=1)
    cases = [
        ({"model": {"teacher_checkpoint": str(other)}}, "another teacher"),
        ({"data": {"train_subset": N - 16}}, "number of training images"),
        ({"data": {"augment": False}}, "augmentation"),
    ]
    for sections, message in cases:
        run = config(tmp_path, Path(cfg.model.teacher_checkpoint), **sections)
        run.data.teacher_cache = str(path)
        with pytest.raises(UserError, match=message) as err:
            build_module.build_run(run, torch.device("cpu"))
        assert "cache-teacher" in str(err.value) and "\n" not in str(err.value)
    meta = json.loads(meta_path(path).read_text())
    meta["data"]["images_sha256"] = "0" * 64
    meta_path(path).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="another training images"):
        build_module.build_run(cfg, torch.device("cpu"))


def test_methods_that_need_the_teachers_features_are_refused(cached, tmp_path):
    cfg, path = cached
    for method, message in (({"name": "fitnet"}, "needs the teacher's features"),
                            ({"name": "kd", "teacher_bn": "batch"}, "batch statistics"),
                            ({"name": "ce"}, "does not distil from a fixed teacher")):
        run = config(tmp_path, Path(cfg.model.teacher_checkpoint))
        run.method = method
        run.data.teacher_cache = str(path)
        with pytest.raises(UserError, match=message):
            build_module.check_model_config(run)


def test_missing_unfinished_and_damaged_caches(cached, tmp_path):
    cfg, path = cached
    with pytest.raises(UserError, match="does not exist"):
        TeacherCache.open(tmp_path / "nope.kdcache")
    partial_paths(tmp_path / "half.kdcache")[1].write_text("{}")
    with pytest.raises(UserError, match="not finished"):
        TeacherCache.open(tmp_path / "half.kdcache")
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(UserError, match="bytes"):
        TeacherCache.open(path)
    with pytest.raises(UserError, match="--views 1"):
        build_teacher_cache(config(tmp_path, Path(cfg.model.teacher_checkpoint),
                                   data={"augment": False}), views=2, progress="none")


def test_checksums_and_the_rebuild_of_a_damaged_or_older_cache(cached):
    cfg, path = cached
    original = path.read_bytes()
    meta = json.loads(meta_path(path).read_text())
    assert meta["version"] == 2 and meta["checksum"] == checksums(path)
    small = checksums(path, chunk=1000)  # several chunks, hashed by several threads
    assert len(small["chunks"]) == -(-len(original) // 1000)
    commits: list[int] = []
    # an older cache (no checksums): refused; cache-teacher adds them without recomputing
    meta_path(path).write_text(json.dumps({**{k: v for k, v in meta.items()
                                              if k != "checksum"}, "version": 1}))
    with pytest.raises(UserError, match="no checksum"):
        TeacherCache.open(path)
    build_teacher_cache(cfg, views=3, batch=3 * N, progress="none", on_commit=commits.append)
    assert commits == [] and path.read_bytes() == original
    assert TeacherCache.open(path).meta["checksum"] == meta["checksum"]
    # a damaged one: refused, naming the bytes; cache-teacher builds it again
    with open(path, "r+b") as f:
        f.seek(len(original) - 10)
        f.write(b"\xff\x7f")
    with pytest.raises(UserError, match=r"is damaged: bytes 0\.\."):
        TeacherCache.open(path)
    build_teacher_cache(cfg, views=3, batch=3 * N, progress="none", on_commit=commits.append)
    assert commits == [N] and path.read_bytes() == original


# --------------------------------------------------------------- an interrupted build
def test_an_interrupted_build_continues_and_equals_an_uninterrupted_one(tmp_path):
    cfg = config(tmp_path, teacher_file(tmp_path / "t"))
    straight, _ = build_teacher_cache(cfg, views=2, out=tmp_path / "a.kdcache", batch=16,
                                      progress="none")

    def stop(done: int) -> None:
        if done >= 16:
            raise KeyboardInterrupt

    target = tmp_path / "b.kdcache"
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(cfg, views=2, out=target, batch=16, progress="none",
                            commit_every_s=0, on_commit=stop)
    assert not target.exists() and not meta_path(target).exists()  # never shown as complete
    assert json.loads(partial_paths(target)[1].read_text())["done"] == 16
    with pytest.raises(UserError, match="not finished"):
        TeacherCache.open(target)
    done: list[int] = []
    path, meta = build_teacher_cache(cfg, views=2, out=target, batch=16, progress="none",
                                     commit_every_s=0, on_commit=done.append)
    assert done == [24, 32, 40, 48]  # continued after the 16 images already stored
    assert path.read_bytes() == straight.read_bytes()
    assert not any(p.exists() for p in partial_paths(target))
    assert meta["complete"] and TeacherCache.open(path).n == N
    again: list[int] = []  # a finished cache is kept as it is
    build_teacher_cache(cfg, views=2, out=target, batch=16, progress="none",
                        on_commit=again.append)
    assert again == []


# --------------------------------------------------------------- training from the cache
@pytest.fixture
def no_report(monkeypatch):
    """Skip the run report's plots (matplotlib) and its teacher-vs-student counts (one
    forward pass of each network after training), which these tests do not look at."""
    monkeypatch.setattr("kdlab.training.trainer.write_report", lambda *a, **k: None)
    monkeypatch.setattr("kdlab.training.trainer.distillation_costs", lambda *a, **k: [])


def count_teacher_calls(monkeypatch) -> list[int]:
    """Count every module call inside the teachers that build_teacher makes, in the training
    steps (the run's checks before training, which recompute a few cached entries and
    evaluate the teacher once, are not counted)."""
    calls, stepping = [0], [False]
    original = build_module.build_teacher

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        teacher = original(*args, **kwargs)
        for m in teacher.modules():
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + stepping[0]))
        return teacher

    train_epoch = Trainer._train_epoch

    def flagged(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        stepping[0] = True
        try:
            return train_epoch(*args, **kwargs)
        finally:
            stepping[0] = False

    monkeypatch.setattr(build_module, "build_teacher", counted)
    monkeypatch.setattr(Trainer, "_train_epoch", flagged)
    return calls


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_kd_and_dkd_train_from_the_cache_without_running_the_teacher(cached, monkeypatch,
                                                                    no_report, method):
    cfg, _ = cached
    cfg.method = {"name": method}
    calls = count_teacher_calls(monkeypatch)
    summary = Trainer(cfg).fit()
    assert calls[0] == 0
    assert summary["epochs"] == 2
    assert all(np.isfinite(v) for v in summary["final_losses"].values())
    assert set(summary["final_losses"]) == {"ce", "kd" if method == "kd" else "dkd"}
    online = config(Path(cfg.train.out_dir).parent / "online", Path(cfg.model.teacher_checkpoint))
    online.method = {"name": method}
    Trainer(online).fit()
    assert calls[0] > 0  # without the cache the same run runs the teacher


def test_a_resumed_run_sees_the_same_views(cached, tmp_path, no_report):
    cfg, _ = cached
    straight = Trainer(cfg).fit()
    first = config(tmp_path / "r", Path(cfg.model.teacher_checkpoint),
                   schedule={"epochs": 1})
    first.data.teacher_cache = cfg.data.teacher_cache
    Trainer(first).fit()
    first.schedule.epochs = 2
    resumed = Trainer(first, resume=True)
    resumed.fit()
    ckpt_a = torch.load(Path(cfg.train.out_dir) / "last.pt", weights_only=True)
    ckpt_b = torch.load(Path(first.train.out_dir) / "last.pt", weights_only=True)
    for key, value in ckpt_a["distiller"].items():
        assert torch.equal(value, ckpt_b["distiller"][key]), key
    assert straight["epochs"] == 2


# --------------------------------------------------------------- the command line
def test_cache_teacher_and_distill_from_it_on_the_command_line(tmp_path, capsys, no_report):
    teacher = teacher_file(tmp_path / "t")
    cfg = config(tmp_path, teacher)
    recipe = tmp_path / "kd.yaml"
    recipe.write_text(json.dumps(cfg.to_dict()))
    sets = ["--set", "data.train_subset=32"]
    assert main(["cache-teacher", str(recipe), "--views", "2", *sets]) == 0
    out = capsys.readouterr().out
    path = teacher.parent / "teacher_cache-synthetic-n32-aug-k2-logits.kdcache"
    assert path.is_file() and f"data.teacher_cache={path}" in out and "built in" in out
    assert main(["distill", str(recipe), *sets, "--set", f"data.teacher_cache={path}",
                 "--out", str(tmp_path / "run_cli")]) == 0
    assert (tmp_path / "run_cli" / "best.pt").is_file()
    shutil.copy(teacher_file(tmp_path / "t2", seed=3), teacher)  # the teacher was retrained
    assert main(["distill", str(recipe), *sets, "--set", f"data.teacher_cache={path}",
                 "--out", str(tmp_path / "run_cli2")]) == 2
    assert "another teacher" in capsys.readouterr().err
    assert main(["cache-teacher", str(recipe), "--format", "topk", "--topk", "11"]) == 2
    assert "at most 10" in capsys.readouterr().err


# --------------------------------------------------------------- kdlab bench
def test_bench_times_kd_with_the_teachers_logits_from_a_cache(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--preset", "cpu", "--device", "cpu", "--batch", "8", "--steps", "2",
            "--warmup", "1", "--methods", "ce,kd,fitnet", "--teacher-cache", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["teacher_cache"] is True
    results = {r["label"]: r for r in report["results"]}
    assert list(results) == ["ce", "kd", "kd+cache", "fitnet"]  # fitnet needs features
    kd, cached = results["kd"], results["kd+cache"]
    assert kd["ratio_to_kd"] == pytest.approx(1.0) and cached["teacher_cache"]
    assert cached["ratio_to_kd"] is not None and cached["ratio_to_kd"] > 0
    # the same steps on the same batch: only the teacher logits' fp16 rounding differs
    assert cached["final_loss"] == pytest.approx(kd["final_loss"], rel=1e-3)
    assert main(args[:-5] + ["--methods", "ce,fitnet", "--teacher-cache"]) == 2
    assert "such as kd or dkd" in capsys.readouterr().err
