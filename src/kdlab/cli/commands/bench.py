"""``kdlab bench``: training throughput, time per iteration and peak memory per method."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from kdlab.tools.bench.presets import DEFAULT_METHODS, DETECTION_METHODS, PRESETS


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
                   "cpu otherwise); tiny: resnet14 -> resnet8, 1x16x16, batch 8 (smoke runs); "
                   "segmentation: scenes_seg (seg_resnet20 -> seg_resnet8, "
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
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="train channels-last (NHWC) as train.channels_last does; auto: on for "
                   "CPU and CUDA (default auto)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the steps as train.compile does (training graph and "
                   "teacher apart); one untimed compiling step first (default backend inductor)")
    p.add_argument("--no-flops", action="store_true",
                   help="skip the FLOP count and the large-matmul rate (GFLOP, GFLOP/s, x mm)")
    p.add_argument("--matmul-size", type=int, default=None, metavar="N",
                   help="side of the square torch.mm whose rate the x mm column divides by "
                   "(default: 1024 on a CPU, 2048 with more than 4 threads, 8192 on CUDA)")
    p.add_argument("--threads", default="auto", metavar="auto|N",
                   help="CPU threads as train.threads: auto = the cores this process may use "
                   "(affinity, cgroup quota), one fewer per core other processes keep busy at "
                   "the start, or OMP_NUM_THREADS when set; fixed for the whole measurement "
                   "(default auto)")
    p.add_argument("--out", metavar="FILE.csv|FILE.json", help="also write the results here")
    p.add_argument("--teacher-cache", action="store_true",
                   help="also time each method that can train from a teacher cache (kd, dkd) "
                   "with the teacher's logits read from one (METHOD+cache: no teacher forward), "
                   "in the same rounds")
    p.add_argument("--scaling", metavar="AXES",
                   help="instead of the method table: how step time grows along these axes, "
                   "'all' or a comma list of batch, image (--methods, default kd,fcfd), paths "
                   "(FCFD |S| 1-4), bank (CRD negatives 1024-16384)")
    p.add_argument("--scaling-out", default="bench-scaling", metavar="DIR",
                   help="folder for scaling.md, scaling.csv and scaling.png "
                   "(default bench-scaling)")
    p.set_defaults(run=run)


def default_methods(preset: str | None = None) -> str:
    from kdlab.methods import METHODS
    from kdlab.tools.bench.bench import parse_methods

    chosen = PRESETS[preset].methods if preset in PRESETS else None
    specs = parse_methods(chosen or DEFAULT_METHODS)
    return ",".join(s.label for s in specs if s.name in METHODS)


def run(args: argparse.Namespace) -> int:
    from kdlab.runtime.threads import apply_thread_policy, parse_threads
    from kdlab.tools.bench.bench import check_output_path, format_table, parse_methods, run_bench
    from kdlab.training.build import resolve_device

    if args.out:
        check_output_path(args.out)
    device = resolve_device(args.device)
    # one count for every timed step: a governor switching mid-measurement would skew it
    apply_thread_policy(parse_threads(args.threads, "--threads"), look=device.type == "cpu")
    preset = args.preset or ("cifar" if device.type == "cuda" else "cpu")
    command = "kdlab " + shlex.join(getattr(args, "argv", []) or ["bench"])
    channels_last = {"on": True, "off": False}.get(args.channels_last, "auto")
    if args.scaling:
        return run_scaling_command(args, preset, device, channels_last, command)
    specs = parse_methods(args.methods or default_methods(preset))
    report = run_bench(
        specs, preset=preset, pair=args.pair, batch=args.batch, steps=args.steps,
        warmup=args.warmup, rounds=args.rounds, device=device, amp=args.amp, command=command,
        teacher_cache=args.teacher_cache,
        channels_last=channels_last, compile=args.compile or False, flops=not args.no_flops,
        matmul_size=args.matmul_size,
    )
    print(format_table(report))
    if args.out:
        from kdlab.tools.bench.bench import write_report

        print(f"written to {write_report(report, args.out)}")
    return 0


def run_scaling_command(args: argparse.Namespace, preset: str, device: Any,
                        channels_last: bool | str, command: str) -> int:
    import time

    from kdlab.nn.layout import use_channels_last
    from kdlab.runtime.threads import thread_summary
    from kdlab.tools.bench.bench import PRESETS, hardware, load_average
    from kdlab.tools.bench.scaling import parse_axes, run_scaling, write_scaling

    axes = parse_axes(args.scaling)
    nhwc = use_channels_last(channels_last, device)
    p = PRESETS[preset]
    points = run_scaling(axes, preset=preset, methods=args.methods or "kd,fcfd",
                         steps=args.steps, warmup=args.warmup, device=device, amp=args.amp,
                         channels_last=nhwc)
    shape = "x".join(str(s) for s in p.input_shape)
    header = (f"kdlab bench --scaling: {p.teacher} -> {p.student}, input {shape}, batch "
              f"{p.batch} unless varied, {args.steps} timed steps after {args.warmup} warm-up "
              f"per point, amp {args.amp}, {'channels-last' if nhwc else 'NCHW'}\n\n"
              f"device {device}: {hardware(device)}; {thread_summary()}; "
              f"load {load_average()}; "
              f"{time.strftime('%Y-%m-%d %H:%M')}\n\ncommand: `{command}`")
    files = write_scaling(points, args.scaling_out, header)
    print(files[0].read_text())
    print("written: " + ", ".join(str(f) for f in files))
    return 0
