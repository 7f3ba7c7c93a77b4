"""`kdlab analyze similarity` (FCFD App. B, Fig. 4): the embedding-free numbers against direct
computations (linear CKA also against the values of Kornblith et al.'s own demo notebook),
the class subset, and the command's table against features computed here."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.cli import main
from kdlab.cli.commands.common import restore_run
from kdlab.data import build_loaders
from kdlab.errors import UserError
from kdlab.tools.analysis.cka import center_gram, linear_cka, mean_cosine
from kdlab.tools.analysis.exit_branch import (
    build_exit_branch,
    file_digest,
    load_cached,
    stage_feature,
)
from kdlab.tools.analysis.plots import plot_similarity
from kdlab.tools.analysis.similarity import class_subset, similarity_rows, tsne
from support.cli import error_of, recipe

SMALL_DATA = {"name": "synthetic", "batch_size": 32, "eval_batch_size": 64,
              "train_subset": 128, "val_subset": 64}


# --------------------------------------------------------------------- the numbers
def test_linear_cka_reproduces_the_reference_notebook():
    """google-research/google-research representation_similarity/Demo.ipynb: X = randn(100,
    10), Y = X + randn(100, 10) from numpy's seed 1337 give linear CKA 0.55761 (Gram and
    feature forms) and debiased 0.51346."""
    rng = np.random.RandomState(1337)
    x = rng.randn(100, 10)
    y = rng.randn(100, 10) + x
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(0.55761,
                                                                                  abs=5e-6)
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y), debiased=True) == \
        pytest.approx(0.51346, abs=5e-6)


def _feature_form(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2
                 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_linear_cka_equals_the_feature_space_form_and_its_invariances():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 80, generator=g, dtype=torch.float64)
    y = x[:, :50] @ torch.randn(50, 40, generator=g, dtype=torch.float64) \
        + torch.randn(30, 40, generator=g, dtype=torch.float64)
    want = _feature_form(x.numpy(), y.numpy())
    assert linear_cka(x, y) == pytest.approx(want, rel=1e-10)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * y @ q) == pytest.approx(want, rel=1e-9)  # rotation, scale
    assert linear_cka(x, x) == pytest.approx(1.0) and 0.0 <= want <= 1.0
    n = 12  # the centred Gram is H K H
    k = torch.randn(n, n, generator=g, dtype=torch.float64)
    k = k @ k.T
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    torch.testing.assert_close(center_gram(k), h @ k @ h)
    with pytest.raises(UserError, match="same images"):
        linear_cka(x, y[:5])


def _hsic_direct(k: list[list[float]], l: list[list[float]], unbiased: bool) -> float:
    """HSIC of two Gram matrices written out with loops, not through center_gram: biased,
    ``tr(K H L H) / (n - 1)^2`` with ``H = I - 1/n`` built entry by entry (Gretton et al.
    2005); unbiased, Song et al. (JMLR 2012) Eq. 5 with zero-diagonal ``K~``, ``L~``:
    ``[tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n-3))``."""
    n = len(k)
    rng = range(n)
    if not unbiased:
        h = [[(1.0 if i == j else 0.0) - 1.0 / n for j in rng] for i in rng]

        def mul(a, b):
            return [[sum(a[i][m] * b[m][j] for m in rng) for j in rng] for i in rng]
        khlh = mul(mul(mul(k, h), l), h)
        return sum(khlh[i][i] for i in rng) / (n - 1) ** 2
    kt = [[0.0 if i == j else k[i][j] for j in rng] for i in rng]
    lt = [[0.0 if i == j else l[i][j] for j in rng] for i in rng]
    trace = sum(kt[i][j] * lt[j][i] for i in rng for j in rng)
    sum_k = sum(map(sum, kt))
    sum_l = sum(map(sum, lt))
    kl_sum = sum(kt[i][m] * lt[m][j] for i in rng for m in rng for j in rng)
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl_sum) \
        / (n * (n - 3))


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_equals_a_slow_direct_hsic_computation(debiased):
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) (Kornblith et al. 2019, Eq. 4), HSIC
    computed with loops over Gram entries of linear kernels built with loops."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(14, 9, generator=g, dtype=torch.float64)
    y = x[:, :6] @ torch.randn(6, 20, generator=g, dtype=torch.float64) \
        + 0.5 * torch.randn(14, 20, generator=g, dtype=torch.float64)
    rows_x, rows_y = x.tolist(), y.tolist()

    def gram(rows):
        return [[sum(p * q for p, q in zip(a, b, strict=True)) for b in rows] for a in rows]
    k, l_ = gram(rows_x), gram(rows_y)
    want = _hsic_direct(k, l_, debiased) / (_hsic_direct(k, k, debiased)
                                            * _hsic_direct(l_, l_, debiased)) ** 0.5
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(want, rel=1e-9)


def test_mean_cosine_is_the_mean_of_per_image_cosines():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, 2, 2, generator=g), torch.randn(7, 3, 2, 2, generator=g)
    direct = 0.0
    for a, b in zip(x.flatten(1).tolist(), y.flatten(1).tolist(), strict=True):
        dot = sum(p * q for p, q in zip(a, b, strict=True))
        direct += dot / (sum(p * p for p in a) ** 0.5 * sum(q * q for q in b) ** 0.5)
    assert mean_cosine(x, y) == pytest.approx(direct / 7, rel=1e-6)
    assert mean_cosine(x, 2 * x) == pytest.approx(1.0)


def test_class_subset_keeps_the_first_images_of_the_first_classes():
    labels = torch.tensor([3, 0, 1, 0, 2, 1, 0, 1, 0])
    images = torch.arange(9.0)[:, None]
    batches = [(images[i:i + 4], labels[i:i + 4]) for i in range(0, 9, 4)]
    sub = class_subset(batches, classes=2, per_class=2)
    assert sub.labels.tolist() == [0, 0, 1, 1]
    assert sub.images.flatten().tolist() == [1.0, 3.0, 2.0, 5.0]
    with pytest.raises(UserError, match="no image of class 4"):
        class_subset(batches, classes=5, per_class=1)


def test_similarity_rows_per_class_and_all():
    g = torch.Generator().manual_seed(2)
    t, s = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    labels = torch.tensor([0] * 5 + [1] * 7)
    rows = similarity_rows("a", t, s, labels)
    assert [(r.cls, r.images) for r in rows] == [(0, 5), (1, 7), (-1, 12)]
    assert rows[1].cka == pytest.approx(_feature_form(t[5:].double().numpy(),
                                                      s[5:].double().numpy()), rel=1e-9)
    assert rows[2].cosine == pytest.approx(mean_cosine(t, s))


# --------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A resnet8 teacher (a few steps on synthetic data) and an FCFD student of it."""
    tmp = tmp_path_factory.mktemp("similarity")
    train = {"device": "cpu", "max_steps_per_epoch": 4, "progress": "none"}
    teacher = recipe(tmp, "teacher.yaml", data=SMALL_DATA, train=train,
                     schedule={"name": "constant", "epochs": 2})
    assert main(["train", str(teacher), "--out", str(tmp / "teacher")]) == 0
    fcfd = recipe(tmp, "fcfd.yaml", data=SMALL_DATA, train=train, method={"name": "fcfd"},
                  model={"student": "resnet8", "teacher": "resnet8",
                         "teacher_checkpoint": str(tmp / "teacher" / "best.pt")})
    assert main(["distill", str(fcfd), "--out", str(tmp / "fcfd")]) == 0
    return tmp


def _table(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["student"], r["cls"]): r for r in csv.DictReader(f)}


def _networks(runs: Path, classes: int, per_class: int):
    """The teacher and FCFD runs restored, and the validation class subset."""
    t_run = restore_run(runs / "teacher", "best", [], device="cpu", load_data=False)
    s_run = restore_run(runs / "fcfd", "best", [], device="cpu", load_data=False)
    val = build_loaders(t_run.cfg.data, torch.device("cpu"), seed=t_run.cfg.train.seed).val
    return t_run, s_run, class_subset(val, classes, per_class)


def test_the_stage_table_equals_a_direct_computation(runs, capsys):
    teacher, fcfd = runs / "teacher", runs / "fcfd"
    assert main(["analyze", "similarity", str(teacher), str(fcfd), str(teacher), "--stage",
                 "2", "--space", "stage", "--classes", "3", "--per-class", "4",
                 "--no-picture"]) == 0
    assert "cosine" in capsys.readouterr().out
    table = _table(teacher / "analysis" / "similarity.csv")
    own = table[("teacher", "all")]
    assert float(own["cosine"]) == pytest.approx(1.0) and float(own["cka"]) == pytest.approx(1.0)
    # the student's rows from the networks directly: its bridge B_st at stage 2
    t_run, s_run, sub = _networks(runs, 3, 4)
    net, student = t_run.distiller.student.eval(), s_run.distiller.eval()
    with torch.no_grad():
        t = stage_feature(net, sub.images, 2).flatten(1).double()
        s = student.b_st["2"](stage_feature(student.student, sub.images, 2)).flatten(1).double()
    for c in range(3):
        row = table[("fcfd", str(c))]
        sel = sub.labels == c
        assert int(row["images"]) == int(sel.sum())
        assert float(row["cka"]) == pytest.approx(_feature_form(t[sel].numpy(),
                                                                s[sel].numpy()), rel=1e-6)
        assert float(row["cosine"]) == pytest.approx(mean_cosine(t[sel], s[sel]), rel=1e-6)
    record = json.loads((teacher / "analysis" / "similarity.json").read_text())
    assert record["students"][0]["feed"] == "bridge B_st" and record["space"] == "stage"
    assert "## " not in (teacher / "analysis" / "similarity.md").read_text().split("###")[0][2:]


def test_the_branch_space_equals_a_direct_computation(runs, capsys):
    """Without re-calibration, the rows equal the cached exit branch's penultimate features
    of the teacher's stage-3 feature and of the student's through its B_st, computed here;
    re-calibration (the default, App. A.2) changes them."""
    teacher, fcfd = runs / "teacher", runs / "fcfd"
    args = ["analyze", "similarity", str(teacher), str(fcfd), "--classes", "4", "--per-class",
            "5", "--epochs", "1", "--progress", "none", "--no-picture"]
    assert main([*args, "--no-recalibrate"]) == 0
    record = json.loads((teacher / "analysis" / "similarity.json").read_text())
    assert record["space"] == "branch" and record["stage"] == 3
    assert record["branch"]["epochs"] == 1 and record["branch"]["recalibrated"] is False
    plain = _table(teacher / "analysis" / "similarity.csv")
    assert set(plain) == {("fcfd", c) for c in ("0", "1", "2", "3", "all")}
    t_run, s_run, sub = _networks(runs, 4, 5)
    net, student = t_run.distiller.student.eval(), s_run.distiller.eval()
    branch = build_exit_branch(net, 3, "resnet8", build_loaders(
        t_run.cfg.data, torch.device("cpu"), seed=t_run.cfg.train.seed).info, seed=3)
    key = {"teacher_checkpoint_sha256": file_digest(t_run.ckpt_path),
           "data": t_run.cfg.to_dict()["data"], "position": 3, "branch_model": "resnet8",
           "epochs": 1, "seed": 0}
    assert load_cached(teacher / "analysis" / "exit_branches" / "k3-resnet8-e1.pt", key,
                       branch) is not None
    branch.eval()
    with torch.no_grad():
        t_in = stage_feature(net, sub.images, 3)
        s_in = student.b_st["3"](stage_feature(student.student, sub.images, 3))
        t, s = (branch.net.run_from(2, branch.adapter(f)).embedding.double()
                for f in (t_in, s_in))
    assert t.shape == (20, 64)
    for c in range(4):
        sel = sub.labels == c
        row = plain[("fcfd", str(c))]
        assert float(row["cka"]) == pytest.approx(_feature_form(t[sel].numpy(),
                                                                s[sel].numpy()), rel=1e-6)
        assert float(row["cosine"]) == pytest.approx(mean_cosine(t[sel], s[sel]), rel=1e-6)
    assert main(args) == 0
    record = json.loads((teacher / "analysis" / "similarity.json").read_text())
    assert record["branch"]["cached"] is True and record["branch"]["recalibrated"] is True
    recal = _table(teacher / "analysis" / "similarity.csv")
    assert recal[("fcfd", "all")]["cosine"] != plain[("fcfd", "all")]["cosine"]


def test_the_picture(runs, capsys):
    pytest.importorskip("sklearn")
    teacher, fcfd = runs / "teacher", runs / "fcfd"
    assert main(["analyze", "similarity", str(teacher), str(fcfd), str(teacher), "--classes",
                 "4", "--per-class", "5", "--epochs", "1", "--progress", "none", "--colour",
                 "class", "--perplexity", "5", "--joint"]) == 0
    record = json.loads((teacher / "analysis" / "similarity.json").read_text())
    assert record["tsne"] == {"seed": 0, "perplexity": 5.0, "joint": True, "colour": "class"}
    assert (teacher / "analysis" / "similarity.png").stat().st_size > 1000


def test_tsne_is_seeded_and_keeps_the_sets_apart(tmp_path):
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(30, 80, generator=g), torch.randn(20, 80, generator=g) + 3.0
    first = tsne([a, b], seed=1, perplexity=5)
    again = tsne([a, b], seed=1, perplexity=5)
    assert [p.shape for p in first] == [(30, 2), (20, 2)]
    for p, q in zip(first, again, strict=True):
        np.testing.assert_array_equal(p, q)
    plot_similarity([("x", first[0], first[1][:20], np.arange(20) % 3)] * 2,
                    tmp_path / "s.png", colour="source", title="t")
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_similarity_errors(runs, capsys, monkeypatch):
    teacher = str(runs / "teacher")
    assert "out of range" in error_of(capsys, "analyze", "similarity", teacher, teacher,
                                      "--space", "stage", "--stage", "5", "--no-picture")
    assert "exit branches go after stages 1..3" in error_of(
        capsys, "analyze", "similarity", teacher, teacher, "--stage", "4", "--no-picture")
    assert "no image of class 10" in error_of(
        capsys, "analyze", "similarity", teacher, teacher, "--space", "stage", "--classes",
        "11", "--no-picture")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    assert "pip install 'kdlab[analysis]'" in error_of(capsys, "analyze", "similarity",
                                                       teacher, teacher)
