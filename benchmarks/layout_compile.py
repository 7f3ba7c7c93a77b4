"""Paired rounds: NCHW vs channels-last, and eager vs torch.compile, per method, in one process.

Each round times every method in every variant in turn (A B A B ...), each a fresh build
(:func:`kdlab.tools.bench.bench.bench_method`, the bench's step); a speed-up is the median over
rounds of the ratio of the two variants' mean step times *in the same round*, so a load
change between rounds hits both sides of each ratio. This is the evidence behind the default
``train.channels_last: auto`` and the advice on ``train.compile`` (docs/performance.md).

    OMP_NUM_THREADS=1 python benchmarks/layout_compile.py --preset cifar --rounds 4 \
        --methods kd,fcfd:num_paths=2,crd --compile-methods kd \
        --out benchmarks/results/layout_compile_cpu.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from kdlab.tools.bench.bench import (
    PRESETS,
    _prime,
    bench_method,
    hardware,
    load_average,
    parse_methods,
)

VARIANTS = {  # name: (channels_last, compile)
    "nchw": (False, False),
    "channels_last": (True, False),
    "channels_last+compile": (True, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar", choices=sorted(PRESETS))
    ap.add_argument("--methods", default="kd,fcfd:num_paths=2")
    ap.add_argument("--compile-methods", default="kd",
                    help="methods also timed compiled (channels-last); '' for none")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    p, device = PRESETS[args.preset], torch.device(args.device)
    specs = parse_methods(args.methods)
    compiled = {s.label for s in parse_methods(args.compile_methods)} if args.compile_methods \
        else set()
    header = (f"# {p.teacher} -> {p.student}, input {p.input_shape}, batch {p.batch}, "
              f"{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} paired rounds"
              f"\n# device {device}: {hardware(device)}; torch {torch.__version__}; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
              f"\n# command: python {shlex.join(sys.argv)}\n# started {time.strftime('%F %T')}, "
              f"load {load_average()}")
    print(header, flush=True)
    _prime(p.student, p.input_shape, p.num_classes, p.batch, device, "none")
    rows: list[dict[str, object]] = []
    for rnd in range(args.rounds):
        for spec in specs:
            for variant, (nhwc, comp) in VARIANTS.items():
                if comp and spec.label not in compiled:
                    continue
                r = bench_method(spec, teacher=p.teacher, student=p.student,
                                 input_shape=p.input_shape, num_classes=p.num_classes,
                                 batch=p.batch, steps=args.steps, warmup=args.warmup,
                                 device=device, train_size=p.train_size, seed=rnd,
                                 channels_last=nhwc, compile=comp, count_flops=False)
                row = {"round": rnd + 1, "method": spec.label, "variant": variant,
                       "ms_mean": round(r.ms_mean, 2), "ms_std": round(r.ms_std, 2),
                       "compile_s": "" if r.compile_s is None else round(r.compile_s, 1),
                       "load": load_average()}
                rows.append(row)
                print(row, flush=True)
    lines = [header, f"# finished {time.strftime('%F %T')}, load {load_average()}"]
    for spec in specs:
        for variant in ("channels_last", "channels_last+compile"):
            base = {r["round"]: r["ms_mean"] for r in rows
                    if r["method"] == spec.label and r["variant"] == "nchw"}
            other = {r["round"]: r["ms_mean"] for r in rows
                     if r["method"] == spec.label and r["variant"] == variant}
            ratios = [base[k] / other[k] for k in other]  # type: ignore[operator]
            if ratios:
                lines.append(f"# {spec.label}: {variant} speed-up over NCHW eager, median of "
                             f"{len(ratios)} paired rounds {statistics.median(ratios):.3f} "
                             f"(range {min(ratios):.3f}-{max(ratios):.3f})")
    print("\n".join(lines[2:]))
    if args.out:
        with args.out.open("w") as f:
            f.write("\n".join(lines) + "\n")
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
