"""``kdlab bench``: training throughput, time per iteration and peak memory per method."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from kdlab.engine.bench import DEFAULT_METHODS, DETECTION_METHODS, PRESETS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="time training steps of several methods on random data",
        description="Per method: warm-up, then timed training steps (forward, backward, SGD) "
        "on one random batch; prints images/s, ms/iter, peak memory and the ratio to kd.",
    )
    p.add_argument("--methods", default=None, metavar="LIST",
                   help=f"comma-separated methods, variants as name:key=value,key=value "
                   f"(default: {DEFAULT_METHODS}, those registered; detection presets: "
                   f"{DETECTION_METHODS})")
    p.add_argument("--pair", metavar="TEACHER:STUDENT", help="models (default: the preset's)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="cifar: resnet32x4 -> resnet8x4, 3x32x32, 100 classes (FCFD Table 11); "
                   "cpu: resnet20 -> resnet8, 1x28x28, 10 classes (default: cifar on a GPU, "
                   "cpu otherwise); segmentation: scenes_seg (seg_resnet20 -> seg_resnet8, "
                   "1x64x64, CPU), cityscapes_seg (DeepLabV3 R101 -> R18, 512x1024, batch 8); "
                   "detection: scenes_det (frcnn_tiny_r18 -> "
                   "frcnn_tiny_r10_slim, 1x64x64, CPU), coco_det (Faster R-CNN FPN ResNet-101 -> "
                   "ResNet-18, 800x800, batch 8)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's, 64)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the methods in turn this many times (fresh build, new seed each "
                   "round); ratios to kd are paired by round (default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--out", metavar="FILE.csv|FILE.json", help="also write the results here")
    p.add_argument("--teacher-cache", action="store_true",
                   help="also time each method that can train from a teacher cache (kd, dkd) "
                   "with the teacher's logits read from one (METHOD+cache: no teacher forward), "
                   "in the same rounds")
    p.set_defaults(run=run)


def default_methods(preset: str | None = None) -> str:
    from kdlab.engine.bench import parse_methods
    from kdlab.methods import METHODS

    chosen = PRESETS[preset].methods if preset in PRESETS else None
    specs = parse_methods(chosen or DEFAULT_METHODS)
    return ",".join(s.label for s in specs if s.name in METHODS)


def run(args: argparse.Namespace) -> int:
    from kdlab.engine.bench import check_output_path, format_table, parse_methods, run_bench
    from kdlab.engine.build import resolve_device

    if args.out:
        check_output_path(args.out)
    device = resolve_device(args.device)
    preset = args.preset or ("cifar" if device.type == "cuda" else "cpu")
    specs = parse_methods(args.methods or default_methods(preset))
    command = "kdlab " + shlex.join(getattr(args, "argv", []) or ["bench"])
    report = run_bench(
        specs, preset=preset, pair=args.pair, batch=args.batch, steps=args.steps,
        warmup=args.warmup, rounds=args.rounds, device=device, amp=args.amp, command=command,
        teacher_cache=args.teacher_cache,
    )
    print(format_table(report))
    if args.out:
        from kdlab.engine.bench import write_report

        print(f"written to {write_report(report, args.out)}")
    return 0
