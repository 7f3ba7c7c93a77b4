"""Training-step cost of the tiny scenes detectors under variants of their RPN / ROI-head
settings (:class:`kdlab.tasks.detection.models.builders.TinyHeads`), in paired rounds.

Each variant is the teacher of ``kdlab bench --preset scenes_det`` (``frcnn_tiny_r18``, or
``--model``) trained alone (the bench's ``ce`` step: forward, backward, SGD step on one
batch of 16 random 1x64x64 images with three random boxes each), timed by
:func:`kdlab.tools.bench.bench.bench_method`, the function behind ``kdlab bench``. The variants
take turns, round after round (fresh build, the round's seed); a variant's speed-up over
``shipped`` is the median over rounds of the two variants' mean step times in the same
round, so slow drifts of the machine's load hit both sides of each ratio alike.

Variants (``--variants``, comma-separated):

- ``shipped``: the settings before issue 21 (one anchor size per level, RPN positive IoU 0.7,
  canonical scale 18 over four pooled levels, 64 ROIs per image at 25 % positives, 7x7,
  sampling ratio 2);
- ``geometry``: canonical scale 224 (the stride-4 level only on a 64-pixel canvas), three
  anchor sizes per level, RPN positive IoU 0.5; ROI sampling and pooler as shipped;
- ``rois32``: ``geometry`` with 32 ROIs per image at 50 % positives;
- ``rois32_sr1``, ``rois32_sr0``: sampling ratio 1, or adaptive (torchvision's 0:
  ceil(ROI size / grid) samples per bin and axis);
- ``rois32_out5``, ``rois32_out5_sr1``: a 5x5 ROIAlign grid (the box head's first layer then
  reads 64 * 25 values instead of 64 * 49); ``rois32_out5_sr1`` is the default
  (``TinyHeads()``);
- ``rois16``: 16 ROIs per image at 50 % positives.

Writes ``<out>.md`` and ``<out>.csv``. Take timings on a quiet machine (nothing else
running)::

    python benchmarks/detection_step.py --rounds 5 --out benchmarks/results/detection_step
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import hardware_line, load  # noqa: E402

from kdlab.models import MODELS  # noqa: E402
from kdlab.nn.layout import use_channels_last  # noqa: E402
from kdlab.runtime.threads import apply_thread_policy, parse_threads  # noqa: E402
from kdlab.tasks.detection.models.builders import TinyHeads, tiny_detector  # noqa: E402
from kdlab.tools.bench.bench import MethodSpec, bench_method  # noqa: E402
from kdlab.tools.bench.presets import PRESETS  # noqa: E402

SHIPPED = TinyHeads(anchor_sizes=((8,), (16,), (32,), (64,), (128,)), rpn_fg_iou=0.7,
                    canonical_scale=18, rois_per_image=64, roi_positive_fraction=0.25,
                    pooled_levels=("0", "1", "2", "3"))
GEOMETRY = TinyHeads(rois_per_image=64, roi_positive_fraction=0.25, roi_output_size=7,
                     roi_sampling_ratio=2)
ROIS32 = dataclasses.replace(GEOMETRY, rois_per_image=32, roi_positive_fraction=0.5)
VARIANTS = {
    "shipped": SHIPPED,
    "geometry": GEOMETRY,
    "rois32": ROIS32,
    "rois32_sr1": dataclasses.replace(ROIS32, roi_sampling_ratio=1),
    "rois32_sr0": dataclasses.replace(ROIS32, roi_sampling_ratio=0),
    "rois32_out5": dataclasses.replace(ROIS32, roi_output_size=5),
    "rois32_out5_sr1": dataclasses.replace(ROIS32, roi_output_size=5, roi_sampling_ratio=1),
    "rois16": dataclasses.replace(ROIS32, rois_per_image=16),
}
#: the tiny models' layouts (widths, blocks per stage), as registered
LAYOUTS = {"frcnn_tiny_r18": ((32, 64, 128, 256), 2), "frcnn_tiny_r10": ((32, 64, 128, 256), 1),
           "frcnn_tiny_r10_slim": ((16, 32, 64, 128), 1)}


def register(model: str, variant: str) -> str:
    """Register ``model`` with the variant's heads under a bench-only name; return it."""
    name = f"{model}@{variant}"
    if name in MODELS.names():
        return name
    widths, blocks = LAYOUTS[model]
    heads = VARIANTS[variant]

    def build(*, num_classes: int, in_channels: int = 1, input_size: int = 64,
              pretrained: bool | str = False):
        return tiny_detector(widths, blocks, num_classes=num_classes, in_channels=in_channels,
                             input_size=input_size, heads=heads)

    build.task = "detection"  # type: ignore[attr-defined]
    MODELS.register(name)(build)
    return name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="frcnn_tiny_r18", choices=sorted(LAYOUTS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", default="1", metavar="auto|N")
    p.add_argument("--out", default="benchmarks/results/detection_step")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    apply_thread_policy(parse_threads(args.threads, "--threads"))
    preset = PRESETS["scenes_det"]
    device = torch.device("cpu")
    nhwc = use_channels_last("auto", device)
    names = {v: register(args.model, v) for v in variants}
    rows: list[dict] = []
    load_before = load()
    for r in range(args.rounds):
        for v in variants:
            res = bench_method(MethodSpec("ce", "ce"), teacher=names[v], student=names[v],
                               input_shape=preset.input_shape, num_classes=preset.num_classes,
                               batch=preset.batch, steps=args.steps, warmup=args.warmup,
                               device=device, seed=r, task=preset.task, channels_last=nhwc,
                               count_flops=False)
            rows.append({"round": r, "variant": v, "ms_mean": round(res.ms_mean, 2),
                         "ms_median": round(res.ms_median, 2),
                         "images_per_s": round(res.images_per_s, 2), "load": load()})
            print(f"round {r} {v:18s} {res.ms_mean:8.1f} ms  {res.images_per_s:6.1f} img/s",
                  flush=True)
    write(args, variants, rows, load_before)
    return 0


def write(args: argparse.Namespace, variants: list[str], rows: list[dict],
          load_before: str) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    ms = {v: [r["ms_mean"] for r in rows if r["variant"] == v] for v in variants}
    base = variants[0]
    command = "python benchmarks/detection_step.py " + shlex.join(sys.argv[1:])
    lines = [
        f"# Detection step cost: {args.model} trained alone under TinyHeads variants", "",
        f"Generated by `benchmarks/detection_step.py` on {time.strftime('%Y-%m-%d')}.", "",
        f"- command: `{command}`",
        hardware_line(f"; {torch.get_num_threads()} torch thread(s) (--threads {args.threads}), "
                      "nothing else running (an exclusive CPU lock)"),
        f"- load (1/5/15 min) before: {load_before}; after: {rows[-1]['load']}",
        f"- step: `kdlab bench --preset scenes_det`'s ce step (batch 16, 1x64x64, three random "
        f"boxes per image), {args.steps} timed steps after {args.warmup} warm-up steps per "
        f"variant and round, {args.rounds} rounds", "",
        f"| variant | ms/step (median of round means) | images/s | x {base} (median of rounds, "
        "range) |", "|---|---|---|---|",
    ]
    for v in variants:
        ratios = [b / a for a, b in zip(ms[v], ms[base], strict=True)]
        med = statistics.median(ms[v])
        lines.append(f"| {v} | {med:.1f} | {16_000 / med:.1f} | {statistics.median(ratios):.2f}"
                     f" ({min(ratios):.2f}-{max(ratios):.2f}) |")
    lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"written to {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
