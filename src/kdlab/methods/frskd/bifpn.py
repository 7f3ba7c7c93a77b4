"""BiFPNc: the self-teacher's feature pyramid of FRSKD.

Ji et al., "Refine Myself by Teaching Myself: Feature Refinement via Self-Knowledge
Distillation", CVPR 2021, Sec. 3.1. A bi-directional feature pyramid (EfficientDet's BiFPN:
a top-down path, a bottom-up path and same-level lateral links) with two changes:

- the width of level ``i`` follows the network it refines, ``d_i = width * c_i`` (``c_i``
  the channels of the student's ``i``-th feature), instead of one fixed width for all levels;
- the 3x3 convolutions are depth-wise separable (depth-wise 3x3, then point-wise 1x1).

Where the paper leaves details open we follow the authors' code (``MingiJi/FRSKD``,
``models/bifpnc.py`` and ``models/utils.py``):

- the first layer rectifies the network's features and projects every level with a 1x1
  conv, BN and ReLU (even when the width is kept) for the top-down path, and projects levels
  ``1..n-1`` once more, with their own 1x1 conv, BN and ReLU, for the bottom-up nodes'
  same-level input (EfficientDet's second lateral); later layers pass their inputs to the
  top-down path as they are and still project them for the bottom-up nodes;
- a bottom-up resample max-pools first (3x3, stride 2, TensorFlow "same" padding: the extra
  row/column goes at the bottom/right), then changes the channels (1x1 conv, BN, ReLU) on
  the smaller map;
- a fusion node is ``act(BN(sep(sum_j w_j x_j)))``: fast normalised weights
  ``w = relu(v) / (sum(relu(v)) + eps)`` with ``eps = 1e-6`` (EfficientDet uses 1e-4),
  initialised to ones; ``depth`` separable convolutions (depth-wise 3x3, point-wise 1x1,
  BN; a ReLU between them, none inside); no conv has a bias;
- the outputs are post-ReLU; the classifier reads the top one (average pool, linear).

One deliberate difference: a top-down resample changes the channels (1x1 conv, BN, ReLU) at
the *coarser* size and then upsamples (nearest), where the authors upsample first. For a
factor-2 upsampling (the only one their code runs) both orders give the same outputs and
gradients in training (nearest upsampling copies each pixel 4 times, which leaves the BatchNorm
batch statistics unchanged; tests/methods/frskd/test_bifpn.py checks it), and ours runs the 1x1
on a quarter of the pixels. Only BatchNorm's running variance differs, by its unbiased
``n / (n - 1)`` correction (``n`` = batch x pixels, a relative ~1/n).

Levels may have any spatial sizes (the authors' code needs each level to halve the
previous one): a coarser map is brought up with nearest-neighbour interpolation, a finer one
down with max pooling (3x3 stride 2 "same" when it is the ceiling of half the size, adaptive
otherwise), a map of the same size is used as it is.

On CPU the pyramid runs in channels-last (NHWC) memory layout: oneDNN convolves NHWC maps
directly, while every NCHW convolution pays a reorder to its blocked layout and back (into
fresh buffers) on each call, and BatchNorm's NHWC kernel is several times faster too. Same
arithmetic, other rounding: BatchNorm's NHWC kernel sums its statistics in float32 (the NCHW
one in float64, CUDA's in float32), so float32 outputs agree with NCHW to about 1e-5
relative; in float64 to 1e-10 (tests/methods/frskd/test_bifpn.py). Costs measured in
benchmarks/results/frskd_cost_cpu.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.nn.layout import preferred_layout


def level_widths(channels: Sequence[int], width: float) -> list[int]:
    """The self-teacher's channels per level, ``d_i = width * c_i`` (at least 1)."""
    return [max(1, round(width * c)) for c in channels]


def max_pool_same(x: Tensor) -> Tensor:
    """3x3 max pooling, stride 2, TensorFlow "same" padding (the authors' down-sampling).

    The output has ``ceil(h / 2)`` rows; an odd size is padded by one on both sides, an even
    one at the bottom/right only, so its windows start at row 0. Done without a padded copy:
    padding 1 for an odd size, 0 for an even one, whose last window ``ceil_mode`` lets run
    over the edge. PyTorch pads with -inf, the authors with zeros: the same for the
    activated (non-negative) maps the pyramid pools.
    """
    h, w = x.shape[-2:]
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=(h % 2, w % 2), ceil_mode=True)


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bring ``x`` to spatial ``size``: nearest upsampling or max-pool downsampling."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if h <= size[0] and w <= size[1]:
        return F.interpolate(x, size=size, mode="nearest")
    if (h + 1) // 2 == size[0] and (w + 1) // 2 == size[1]:
        return max_pool_same(x)
    return F.adaptive_max_pool2d(x, size)


class PointwiseConv(nn.Sequential):
    """1x1 convolution, BatchNorm, ReLU: changes the number of channels.

    The ReLU works in place on the BatchNorm's output (BatchNorm's backward needs only its
    input): one full-size allocation fewer per call, same values.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBlock(nn.Sequential):
    """``depth`` depth-wise separable 3x3 convolutions (depth-wise, point-wise, BN), ReLU
    (in place on the BN output) between them; the output is pre-activation."""

    def __init__(self, channels: int, depth: int) -> None:
        layers: list[nn.Module] = []
        for i in range(depth):
            if i > 0:
                layers.append(nn.ReLU(inplace=True))
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                nn.Conv2d(channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
            ]
        super().__init__(*layers)


class FastFusion(nn.Module):
    """Weighted sum of same-shaped maps with fast normalised weights (EfficientDet Eq. 3).

    ``eps = 1e-6`` as in the FRSKD authors' code (EfficientDet: 1e-4).

    The inputs must already be activated (non-negative): :class:`BiFPNLayer` applies each
    ReLU once, where a map is made, instead of once per fusion node that reads it.
    """

    def __init__(self, num_inputs: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps

    def normalized_weights(self) -> Tensor:
        w = F.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        w = self.normalized_weights()
        out = w[0] * inputs[0]
        for j in range(1, len(inputs)):
            # in place: the running sum is saved by no backward, so no new map per term
            out = out.add_(w[j] * inputs[j])
        return out


class BiFPNLayer(nn.Module):
    """One top-down + bottom-up pass over ``len(widths)`` levels (level 0 the finest).

    Top-down: ``T_n = P_n``; ``T_i = act(conv(fuse(P_i, up(T_{i+1}))))``.
    Bottom-up: ``O_0 = T_0``; ``O_i = act(conv(fuse(Q_i, T_i, down(O_{i-1}))))`` and, at the
    top, ``O_n = act(conv(fuse(Q_n, down(O_{n-1}))))``. ``P_i`` and ``Q_i`` are two lateral
    links from the layer's input at level ``i``: in the ``first`` layer both are 1x1 conv, BN
    and ReLU projections of the rectified network feature (separate weights, as in the
    authors' code); in later layers ``P_i`` is the input itself (the previous layer's
    activated output) and ``Q_i`` still a projection. ``up`` changes ``d_{i+1}`` to ``d_i``
    channels (1x1 conv, BN, ReLU) and then upsamples; ``down`` max-pools and then changes
    ``d_{i-1}`` to ``d_i`` channels.

    Every map is activated (ReLU) once, where it is made, and the activated map is shared by
    every node that reads it.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        widths: Sequence[int],
        depth: int,
        *,
        first: bool = True,
    ) -> None:
        super().__init__()
        n = len(widths)
        if not first and list(in_channels) != list(widths):
            raise ValueError("a BiFPN layer after the first reads maps of its own widths")
        self.first = first
        self.lateral = nn.ModuleList(
            PointwiseConv(c, d) if first else nn.Identity()
            for c, d in zip(in_channels, widths, strict=True)
        )
        # index i is the node at level i + 1 (level 0 has no bottom-up node)
        self.bu_lateral = nn.ModuleList(
            PointwiseConv(in_channels[i], widths[i]) for i in range(1, n)
        )
        # index i is the node at level i (the top level has no top-down node)
        self.td_fuse = nn.ModuleList(FastFusion(2) for _ in range(n - 1))
        self.td_proj = nn.ModuleList(PointwiseConv(widths[i + 1], widths[i]) for i in range(n - 1))
        self.td_conv = nn.ModuleList(SeparableConvBlock(widths[i], depth) for i in range(n - 1))
        self.bu_fuse = nn.ModuleList(FastFusion(3 if i < n - 1 else 2) for i in range(1, n))
        self.bu_proj = nn.ModuleList(PointwiseConv(widths[i - 1], widths[i]) for i in range(1, n))
        self.bu_conv = nn.ModuleList(SeparableConvBlock(widths[i], depth) for i in range(1, n))

    def fusions(self) -> list[FastFusion]:
        return [*self.td_fuse, *self.bu_fuse]

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """Activated (post-ReLU) outputs, one per level, each shaped like its lateral input."""
        n = len(feats)
        if self.first:  # not in place: these are the student's own maps
            feats = [F.relu(f) for f in feats]
        p = [lat(f) for lat, f in zip(self.lateral, feats, strict=True)]
        q = [lat(f) for lat, f in zip(self.bu_lateral, feats[1:], strict=True)]
        td: list[Tensor] = [p[-1]]  # td[0] is the current coarsest top-down map
        for i in range(n - 2, -1, -1):
            up = resize_to(self.td_proj[i](td[0]), p[i].shape[-2:])
            td.insert(0, F.relu(self.td_conv[i](self.td_fuse[i]([p[i], up])), inplace=True))
        out = [td[0]]
        for i in range(1, n):
            down = self.bu_proj[i - 1](resize_to(out[-1], p[i].shape[-2:]))
            inputs = [q[i - 1], td[i], down] if i < n - 1 else [q[i - 1], down]
            out.append(F.relu(self.bu_conv[i - 1](self.bu_fuse[i - 1](inputs)), inplace=True))
        return out


class BiFPNc(nn.Module):
    """The FRSKD self-teacher: BiFPNc layers on a network's features plus a classifier.

    Args:
        in_channels: channels ``c_i`` of the input features, finest level first.
        num_classes: outputs of the classifier on the refined top level.
        width: width factor; level ``i`` has ``d_i = width * c_i`` channels.
        depth: separable convolutions per fusion node.
        repeat: number of stacked BiFPN layers. Layers after the first project their
            bottom-up laterals from ``d_i`` to ``d_i`` channels (the authors' ``bifpnc.py``
            builds them from ``c_i``, which runs only for width 1; their other BiFPN,
            ``classification/models/bifpn.py``, does it as here); their default is 1.

    ``forward(feats)`` returns ``(refined, logits)``: the refined maps (post-ReLU, level ``i``
    with ``d_i`` channels and the spatial size of ``feats[i]``; channels-last on CPU, see
    :func:`preferred_layout`) and the classifier's logits (global average pooling and a linear
    layer on the top refined map).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        width: float = 2.0,
        depth: int = 2,
        repeat: int = 1,
    ) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError("BiFPNc needs at least two feature levels")
        if width <= 0 or depth < 1 or repeat < 1:
            raise ValueError("BiFPNc needs width > 0, depth >= 1 and repeat >= 1")
        self.in_channels = list(in_channels)
        self.widths = level_widths(in_channels, width)
        self.layers = nn.ModuleList(
            BiFPNLayer(self.in_channels, self.widths, depth, first=True)
            if r == 0
            else BiFPNLayer(self.widths, self.widths, depth, first=False)
            for r in range(repeat)
        )
        self.fc = nn.Linear(self.widths[-1], num_classes)

    def fusions(self) -> list[FastFusion]:
        """Every fusion node (for inspecting the learned weights)."""
        return [f for layer in self.layers for f in layer.fusions()]

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature levels, got {len(feats)}")
        layout = preferred_layout(feats[0].device)
        x = [f.contiguous(memory_format=layout) for f in feats]
        for layer in self.layers:
            x = layer(x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x[-1], 1), 1)
        return x, self.fc(pooled)
