"""What the detection parity fixtures (FGFI, ReviewKD for detection) are computed on, shared by
``generate_detection.py`` and ``tests/methods/test_parity_detection.py``.

No detector runs: the two losses read FPN-shaped feature maps, ground-truth boxes and anchors,
so the inputs are copied features drawn from seeds (float64), and kdlab's own modules (FGFI's
adaptation layer, ReviewKD's ABFs) are built under a seed; the reference side receives copies
of their weights. The only numbers of a reference stored in a fixture are its outputs (masks,
losses, gradient norms) and the nine base anchors its anchor generator returns.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.methods.fgfi.adapter import Adaptation
from kdlab.methods.reviewkd.detection import fpn_abfs

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity_detection"
SEEDS = {"features": 21, "modules": 22}

# ------------------------------------------------------------------- FGFI (one map, stride 16)
FGFI_MAP = (20, 30)  # H, W of the feature map (the authors' single VGG conv5 map)
FGFI_STRIDE = 16
FGFI_CHANNELS = 8
#: per image, the ground-truth boxes (x1, y1, x2, y2) in pixels of the 320 x 480 image
FGFI_BOXES = [
    [[40.0, 50.0, 200.0, 180.0], [250.0, 30.0, 300.0, 100.0]],
    [[10.0, 200.0, 90.0, 300.0], [300.0, 100.0, 470.0, 310.0], [120.0, 60.0, 150.0, 95.0]],
]
FGFI_WEIGHT = 0.01

# ------------------------------------------------------------------- ReviewKD (five levels)
REVIEW_SIZES = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]  # p2..p6-like, odd ratios
REVIEW_CHANNELS = 8
BATCH = 2


def _generator(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(SEEDS[name])


def fgfi_features() -> tuple[Tensor, Tensor]:
    """(student, teacher) maps ``(B, C, H, W)``, float64."""
    g = _generator("features")
    shape = (BATCH, FGFI_CHANNELS, *FGFI_MAP)
    return (torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(shape, generator=g, dtype=torch.float64))


def fgfi_adapter(relu: bool) -> Adaptation:
    """kdlab's adaptation layer from the modules' seed, with a non-trivial weight (the
    authors' 1e-4 initialisation would make the adapted map almost its bias)."""
    torch.manual_seed(SEEDS["modules"])
    a = Adaptation(FGFI_CHANNELS, FGFI_CHANNELS, relu=relu).double()
    g = _generator("modules")
    with torch.no_grad():
        a[0].weight.copy_(torch.randn(a[0].weight.shape, generator=g, dtype=torch.float64) * 0.1)
    return a


def fgfi_anchor_grid(base_anchors: list[list[float]]) -> Tensor:
    """The anchors of every location ``(H, W, A, 4)``: the base anchors shifted by
    ``stride * (x, y)`` (py-faster-rcnn's layout: location-major, anchor index inner)."""
    h, w = FGFI_MAP
    base = torch.tensor(base_anchors, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) * FGFI_STRIDE,
                            torch.arange(w, dtype=torch.float64) * FGFI_STRIDE, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], dim=-1)[:, :, None]
    return shifts + base[None, None]


def review_features() -> tuple[list[Tensor], list[Tensor]]:
    """(student levels, teacher levels) of ``REVIEW_SIZES``, float64."""
    g = _generator("features")
    make = [(BATCH, REVIEW_CHANNELS, h, w) for h, w in REVIEW_SIZES]
    s = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in make]
    t = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in make]
    return s, t


def review_abfs() -> nn.ModuleList:
    """kdlab's ABFs as the detection variant builds them, from the modules' seed, with
    non-trivial BatchNorm affine parameters and attention biases; train mode, float64."""
    torch.manual_seed(SEEDS["modules"])
    c = REVIEW_CHANNELS
    abfs = fpn_abfs(len(REVIEW_SIZES), c, c, c).double()
    g = _generator("modules")
    with torch.no_grad():
        for name, p in abfs.named_parameters():
            if "conv1.1" in name or "conv2.1" in name or "att_conv" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return abfs.train()
