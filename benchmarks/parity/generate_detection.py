"""Write the detection parity fixtures: FGFI's imitation mask and loss, and ReviewKD's
detection loss, computed by their authors' code on copied features
(``tests/methods/test_parity_detection.py`` holds kdlab to them).

Usage (each path a checkout of that repository, e.g. ``git archive`` of the commit)::

    python benchmarks/parity/generate_detection.py \
        --fgfi refs/Distilling-Object-Detectors \
        --reviewkd refs/ReviewKD [--out tests/fixtures/parity_detection]

Nothing of the references is copied into kdlab; their modules are imported from those paths
while this script runs. Neither needs Detectron2:

- FGFI (twangnh/Distilling-Object-Detectors): the mask is the last output of their RPN's
  ``_AnchorTargetLayer`` (``lib/model/rpn/anchor_target_layer.py``), run unchanged on CPU in
  float64 with two shims: a stand-in ``easydict`` module (their config imports ``EasyDict``)
  and ``torch.Tensor.cuda`` as the identity (the layer moves its mask buffer with ``.cuda()``).
  Their loss is written inline in their training loop (``trainval_net_sup.py``), which cannot
  be imported: :func:`fgfi_reference_loss` restates those lines, fed the reference's own mask,
  an adaptation layer of the reference's form (``Conv2d(C, C, 3, padding=1)`` + ``ReLU``)
  holding kdlab's weights, and the copied features.
- ReviewKD (dvlab-research/ReviewKD): ``Detection/model/kd_trans.py`` (``ReviewKD``, ``hcl``),
  imported by file path (the package ``__init__`` imports Detectron2); its ABFs receive
  kdlab's weights (their ``abfs[j]`` serves level ``L - 1 - j``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection_setup as D  # noqa: E402

REPOS = {"fgfi": "github.com/twangnh/Distilling-Object-Detectors",
         "reviewkd": "github.com/dvlab-research/ReviewKD"}
COMMAND = "python benchmarks/parity/generate_detection.py --fgfi ... --reviewkd ..."


def commit_of(path: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        marker = path / "COMMIT"
        if marker.exists():
            return marker.read_text().strip()
        raise SystemExit(f"cannot tell the commit of {path}: no git checkout, no COMMIT "
                         "file") from None


@contextlib.contextmanager
def fgfi_importable(root: Path) -> Iterator[None]:
    """The authors' ``lib/`` on sys.path, an ``easydict`` stand-in, ``Tensor.cuda`` as the
    identity; all undone afterwards."""
    class EasyDict(dict):
        def __getattr__(self, key):  # noqa: ANN001, ANN204
            try:
                return self[key]
            except KeyError:
                raise AttributeError(key) from None

        def __setattr__(self, key, value):  # noqa: ANN001, ANN204
            self[key] = value

    stub = types.ModuleType("easydict")
    stub.EasyDict = EasyDict
    saved_cuda = torch.Tensor.cuda
    sys.modules["easydict"] = stub
    sys.path.insert(0, str(root / "lib"))
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved_cuda
        sys.path.remove(str(root / "lib"))
        for name in list(sys.modules):
            if name == "easydict" or name.split(".")[0] == "model":
                del sys.modules[name]


def fgfi_reference_loss(sup_feature: torch.Tensor, stu_feature: torch.Tensor,
                        mask_batch: list[torch.Tensor], adap: nn.Module,
                        weight: float) -> torch.Tensor:
    """The authors' imitation loss, restated from their training loop
    (``trainval_net_sup.py``, the lines after both networks' forward passes): binarise each
    image's count map, stack, ``norms = 2 * mask.sum()``, the masked squared difference
    summed over everything and divided by ``norms``, times the imitation weight."""
    mask_list = [(mask > 0).double().unsqueeze(0) for mask in mask_batch]
    mask = torch.stack(mask_list, dim=0)
    norms = mask.sum() * 2
    adapted = adap(stu_feature)
    return (torch.pow(sup_feature - adapted, 2) * mask).sum() / norms * weight


def fgfi_fixture(root: Path) -> dict:
    with fgfi_importable(root):
        from model.rpn.anchor_target_layer import (  # type: ignore[import-not-found]
            _AnchorTargetLayer,
        )
        from model.rpn.generate_anchors import (  # type: ignore[import-not-found]
            generate_anchors,
        )

        layer = _AnchorTargetLayer(D.FGFI_STRIDE, np.array([8, 16, 32]), np.array([0.5, 1, 2]))
        h, w = D.FGFI_MAP
        k = max(len(b) for b in D.FGFI_BOXES)
        gt = torch.zeros(D.BATCH, k, 5, dtype=torch.float64)
        for i, boxes in enumerate(D.FGFI_BOXES):
            for j, box in enumerate(boxes):
                gt[i, j] = torch.tensor([*box, 1.0], dtype=torch.float64)
        score = torch.zeros(D.BATCH, 18, h, w, dtype=torch.float64)
        im_info = torch.tensor([[h * D.FGFI_STRIDE, w * D.FGFI_STRIDE, 1.0]] * D.BATCH,
                               dtype=torch.float64)
        num_boxes = torch.tensor([len(b) for b in D.FGFI_BOXES])
        np.random.seed(0)  # the layer's RPN label sampling (not the mask) draws from numpy
        counts = layer((score, gt, im_info, num_boxes))[-1]
        base = generate_anchors(scales=np.array([8, 16, 32]),
                                ratios=np.array([0.5, 1, 2])).tolist()
    s, t = D.fgfi_features()
    s.requires_grad_(True)
    kd_adapter = D.fgfi_adapter(relu=True)
    conv = kd_adapter[0]
    ref_adapter = nn.Sequential(nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=3,
                                          padding=1), nn.ReLU()).double()
    ref_adapter.load_state_dict(kd_adapter.state_dict())
    loss = fgfi_reference_loss(t, s, counts, ref_adapter, D.FGFI_WEIGHT)
    (grad,) = torch.autograd.grad(loss, s)
    masks = [(c > 0).to(torch.int64).tolist() for c in counts]
    return {
        "what": "FGFI's imitation mask (their _AnchorTargetLayer) and loss (their training "
                "loop's lines, restated) on one stride-16 map, +1 IoU convention, psi 0.5",
        "reference": {"repository": REPOS["fgfi"], "commit": commit_of(root),
                      "files": ["lib/model/rpn/anchor_target_layer.py",
                                "lib/model/rpn/generate_anchors.py",
                                "lib/model/faster_rcnn/vgg11.py (adaptation layer's form)",
                                "trainval_net_sup.py (loss lines, restated)"]},
        "base_anchors": base,
        "masks": masks,
        "positions": [int(sum(map(sum, m))) for m in masks],
        "weight": D.FGFI_WEIGHT,
        "loss": loss.item(),
        "grad_student_sq": float(grad.pow(2).sum()),
    }


def review_fixture(root: Path) -> dict:
    path = root / "Detection" / "model" / "kd_trans.py"
    spec = importlib.util.spec_from_file_location("reviewkd_kd_trans", path)
    assert spec is not None and spec.loader is not None
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    c, n = D.REVIEW_CHANNELS, len(D.REVIEW_SIZES)
    ours = D.review_abfs()
    model = ref.ReviewKD([c] * n, [c] * n, c).double().train()
    for i in range(n):  # their abfs[j] serves level n - 1 - j (built shallow first, reversed)
        model.abfs[n - 1 - i].load_state_dict(ours[i].state_dict())
    s, t = D.review_features()
    for x in s:
        x.requires_grad_(True)
    loss = ref.hcl(model(s), t)
    grads = torch.autograd.grad(loss, s)
    return {
        "what": "ReviewKD for detection: their ReviewKD module (ABFs over five FPN-like levels, "
                "deepest first, no resize) and hcl, train mode, weight 1",
        "reference": {"repository": REPOS["reviewkd"], "commit": commit_of(root),
                      "files": ["Detection/model/kd_trans.py"]},
        "sizes": [list(hw) for hw in D.REVIEW_SIZES],
        "loss": loss.item(),
        "grad_student_sq": [float(g.pow(2).sum()) for g in grads],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fgfi", type=Path, required=True)
    p.add_argument("--reviewkd", type=Path, required=True)
    p.add_argument("--out", type=Path, default=D.FIXTURES)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"seeds": D.SEEDS, "batch": D.BATCH, "dtype": "float64", "command": COMMAND}
    for name, fixture in (("fgfi", fgfi_fixture(args.fgfi)),
                          ("reviewkd", review_fixture(args.reviewkd))):
        path = args.out / f"{name}.json"
        path.write_text(json.dumps({**common, **fixture}, indent=1) + "\n")
        print(f"wrote {path}: loss {fixture['loss']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
