"""The feature-similarity picture of FCFD (Liu et al., ICLR 2023, App. B, Fig. 4) and its
embedding-free numbers.

The paper feeds the frozen teacher's intermediate feature and the students' features (after
each student's bridge ``B_st``) to the exit branches of Sec. 3.4 / App. A.2, collects the
branches' **penultimate** features for the test images of the first 10 CIFAR-100 classes,
embeds teacher and student points together with t-SNE and colours them by source (student
light blue, teacher light red; where they overlap, dark): with FCFD more student points sit on
teacher points than with appearance-only matching.

- ``space="branch"`` is the paper's: the exit branch at stage ``k``'s penultimate feature
  (its pooled embedding), the branch's BatchNorm re-calibrated on each student's training
  features first, as the probe does (App. A.2).
- ``space="stage"``: the stage-``k`` feature itself, flattened (the student's through its
  bridge where its run has one, as is where it has the teacher's shape).

Per class (and over all the classes), two numbers that do not depend on the embedding's
randomness (:mod:`~kdlab.tools.analysis.cka`): the mean cosine similarity between each image's
teacher and student feature, and linear CKA (biased and debiased) between the two sets.

t-SNE is scikit-learn's (an optional extra, ``pip install 'kdlab[analysis]'``): the method the
paper names, maintained, deterministic with a seed (``init="pca"``); wide features are first
reduced to 50 dimensions with PCA, as scikit-learn advises.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdlab.errors import UserError
from kdlab.runtime.files import atomic_write, atomic_write_text
from kdlab.tools.analysis.cka import linear_cka, mean_cosine
from kdlab.tools.analysis.exit_branch import ExitBranch, FeatureFn

SPACES = ("branch", "stage")
#: PCA width before t-SNE (scikit-learn's advice for wide features)
PCA_DIMS = 50


@dataclass
class ClassSubset:
    """Validation images of the first ``classes`` classes, at most ``per_class`` each."""

    images: Tensor
    labels: Tensor
    classes: int


def class_subset(loader: Iterable[Any], classes: int, per_class: int) -> ClassSubset:
    """The first ``per_class`` images of each class ``0..classes-1`` in ``loader``'s order."""
    if classes < 1 or per_class < 1:
        raise UserError(f"--classes and --per-class must be at least 1, got {classes} and "
                        f"{per_class}.")
    kept: list[list[Tensor]] = [[] for _ in range(classes)]
    for batch in loader:
        images, labels = batch[0].cpu(), batch[1].cpu()
        for c in range(classes):
            room = per_class - sum(len(x) for x in kept[c])
            if room > 0:
                kept[c].append(images[labels == c][:room])
        if all(sum(len(x) for x in k) >= per_class for k in kept):
            break
    empty = [c for c in range(classes) if not sum(len(x) for x in kept[c])]
    if empty:
        raise UserError(f"The validation split has no image of class {empty[0]}; use --classes "
                        "up to the data set's number of classes.")
    parts = [torch.cat(k) for k in kept]
    labels = torch.cat([torch.full((len(p),), c, dtype=torch.long) for c, p in enumerate(parts)])
    return ClassSubset(torch.cat(parts), labels, classes)


@torch.no_grad()
def collect(fn: FeatureFn, images: Tensor, device: torch.device, batch: int = 256) -> Tensor:
    """``fn`` on ``images`` in batches: ``(n, d)`` float64 on the CPU (flattened)."""
    out = [fn(images[i:i + batch].to(device)).flatten(1).double().cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def penultimate(branch: ExitBranch, feed: FeatureFn) -> FeatureFn:
    """images -> the exit branch's penultimate feature (its pooled embedding) of ``feed``."""
    def fn(images: Tensor) -> Tensor:
        f = branch.adapter(feed(images))
        return branch.net.run_from(branch.position - 1, f).embedding
    return fn


@dataclass
class SimilarityRow:
    """One student's similarity to the teacher on one class (``cls`` = -1: all classes)."""

    student: str
    cls: int
    images: int
    cosine: float
    cka: float
    cka_debiased: float


def similarity_rows(student: str, teacher: Tensor, features: Tensor,
                    labels: Tensor) -> list[SimilarityRow]:
    """Per class (then all together): mean cosine, linear CKA, debiased linear CKA between
    the teacher's and the student's features of the same images."""
    rows = []
    groups = [(int(c), labels == c) for c in labels.unique()] + [(-1, labels >= 0)]
    for c, sel in groups:
        t, s = teacher[sel], features[sel]
        rows.append(SimilarityRow(student, c, int(sel.sum()), mean_cosine(t, s),
                                  linear_cka(t, s), linear_cka(t, s, debiased=True)))
    return rows


def write_tables(rows: Sequence[SimilarityRow], md: Path, csv_path: Path,
                 header: Sequence[str], class_name: Callable[[int], str] = str) -> None:
    """The rows as Markdown (one table per student, header lines first) and CSV."""
    def name(c: int) -> str:
        return "all" if c < 0 else class_name(c)

    lines = [*header, ""]
    for student in dict.fromkeys(r.student for r in rows):
        mine = [r for r in rows if r.student == student]
        lines += [f"### {student}", "", "| class | images | mean cosine | linear CKA | "
                  "debiased linear CKA |", "|---|---|---|---|---|"]
        lines += [f"| {name(r.cls)} | {r.images} | {r.cosine:.4f} | {r.cka:.4f} | "
                  f"{r.cka_debiased:.4f} |" for r in mine]
        lines.append("")
    atomic_write_text(md, "\n".join(lines))

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])), lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({**asdict(r), "cls": name(r.cls)})
    atomic_write(csv_path, write)


def require_tsne() -> Any:
    """scikit-learn's TSNE, or a UserError naming the extra to install."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise UserError("The similarity picture needs scikit-learn's t-SNE: pip install "
                        "'kdlab[analysis]' (or pass --no-picture for the table alone).") from None
    return TSNE


def tsne(sets: Sequence[Tensor], seed: int = 0, perplexity: float = 30.0) -> list[np.ndarray]:
    """One joint t-SNE of the rows of every set (PCA to :data:`PCA_DIMS` first when wider):
    2-D points per set, in order."""
    tsne_cls = require_tsne()
    from sklearn.decomposition import PCA

    x = torch.cat([s.double() for s in sets]).numpy()
    if x.shape[1] > PCA_DIMS and x.shape[0] > PCA_DIMS:
        x = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (x.shape[0] - 1) / 3)
    points = tsne_cls(n_components=2, init="pca", random_state=seed,
                      perplexity=perplexity).fit_transform(x)
    sizes = [len(s) for s in sets]
    return list(np.split(points, np.cumsum(sizes)[:-1]))


__all__ = ["SPACES", "ClassSubset", "SimilarityRow", "class_subset", "collect", "penultimate",
           "require_tsne", "similarity_rows", "tsne", "write_tables"]
