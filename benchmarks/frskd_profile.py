"""Where FRSKD's training step spends its time, FLOPs and memory (CPU profile of a few steps).

FRSKD: Ji et al., CVPR 2021. FRSKD has no teacher: for the ``cpu`` bench pair's student
(resnet8, 1x28x28, batch 64) this script

1. counts the FLOPs of one training step (``torch.utils.flop_counter``) for ce, kd and FRSKD
   (the default: the three stages after the stem, as the authors; and all four stages),
   FRSKD's split into student forward, self-teacher forward, the self-teacher's backward
   and the student's backward (the two graphs are disjoint: the self-teacher reads
   detached features), and the self-teacher's forward FLOPs per pyramid level and kind of
   layer (``--tables`` picks the parts to run);
2. times the same parts of a few steps by wrapping those calls on the instance, with the
   minor page faults per step (fresh memory the kernel has to map);
3. sums the bytes autograd keeps for the backward (distinct storages), kd against FRSKD;
4. runs ``torch.profiler`` over a few steps: top operators by self CPU time, overall and by
   input shape.

``--layout nchw`` runs the self-teacher in the default (NCHW) layout instead of
:func:`kdlab.nn.layout.preferred_layout`'s channels-last, to see what the layout buys.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/frskd_profile.py > \
        benchmarks/results/frskd_profile_cpu.txt

Reuses the builder, step and part timer of ``fcfd_profile.py`` and the FLOP, page-fault and
saved-memory helpers of ``profiling.py`` (same folder). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from typing import Any

import torch
from fcfd_profile import FORWARD, Parts, build, step
from profiling import (
    count_step,
    flop_counter,
    load_average,
    minor_faults,
    profiler_tables,
    saved_memory_mib,
)

import kdlab.methods.frskd.bifpn as bifpn
from kdlab.tools.bench.bench import PRESETS, cpu_name

STUDENT_FWD = "student forward"
TEACHER_FWD = "self-teacher forward (BiFPNc + classifier)"
TEACHER_BWD = "backward: self-teacher (its CE)"
STUDENT_BWD = "backward: student (CE, KD, attention)"
OPTIMISER = "optimiser (SGD step + zero_grad)"
FRSKD_VARIANTS = {"frskd (default: 3 levels, after the stem)": {},
                  "frskd levels=4 (the stem too)": {"levels": 4}}


def instrument(d: Any, parts: Parts) -> None:
    """Label FRSKD's two forward calls (instance attributes; the classes are untouched)."""
    parts.wrap(d.student, "features", STUDENT_FWD)
    parts.wrap(d.self_teacher, "forward", TEACHER_FWD)


def frskd_step(d: Any, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               parts: Parts) -> None:
    """One step with the backward split in two: the graphs are disjoint, the work is the
    same as one ``sum(losses).backward()``."""
    t0 = time.perf_counter()
    _, losses = d(x, y)
    parts.seconds[FORWARD] += time.perf_counter() - t0
    with parts.part(TEACHER_BWD):
        losses.pop("self_teacher_ce").backward()
    with parts.part(STUDENT_BWD):
        sum(losses.values()).backward()
    with parts.part(OPTIMISER):
        opt.step()
        opt.zero_grad(set_to_none=True)


def flop_table() -> list[str]:
    gf = 1e9
    ce, kd = count_step("ce", {}), count_step("kd", {})
    lines = ["== FLOPs per training step (forward + backward; conv and matmul only), batch 64; "
             "'as torch counts' is FlopCounterMode's own convolution_backward formula",
             f"{'':<46} {'GFLOP':>8} {'x kd':>6} {'as torch counts':>16}",
             f"{'ce (student alone)':<46} {ce / gf:8.3f} {ce / kd:6.2f}",
             f"{'kd (resnet20 teacher forward + student)':<46} {kd / gf:8.3f} {1.0:6.2f}"]
    for label, opts in FRSKD_VARIANTS.items():
        d, opt, x, y = build("frskd", opts)
        parts = Parts()
        instrument(d, parts)
        frskd_step(d, opt, x, y, parts)
        with flop_counter() as fc:
            parts.counter = fc
            frskd_step(d, opt, x, y, parts)
        total = fc.get_total_flops()
        raw = count_step("frskd", opts, grouped_fix=False)
        lines.append(f"{label:<46} {total / gf:8.3f} {total / kd:6.2f} "
                     f"{raw / gf:9.3f} ({raw / kd:4.2f}x)")
        for name in (STUDENT_FWD, TEACHER_FWD, TEACHER_BWD, STUDENT_BWD):
            f = parts.flops[name]
            lines.append(f"  {name:<44} {f / gf:8.3f} {f / kd:6.2f}   {100 * f / total:4.1f} %")
    lines.append("")
    return lines


def _kind_and_level(name: str, conv: torch.nn.Conv2d) -> tuple[str, int]:
    """Kind of a BiFPNc convolution and the level it feeds, from its dotted name
    (``layers.<r>.<group>.<index>.<leaf>``)."""
    group, index = name.split(".")[2:4]
    level = int(index) + (1 if group.startswith("bu_") else 0)
    if conv.groups > 1:
        return "separable: depth-wise 3x3", level
    return {"lateral": "top-down lateral 1x1", "bu_lateral": "bottom-up lateral 1x1",
            "td_proj": "top-down resample 1x1",
            "bu_proj": "bottom-up resample 1x1", "td_conv": "separable: point-wise 1x1",
            "bu_conv": "separable: point-wise 1x1"}[group], level


def level_table(opts: dict[str, Any]) -> list[str]:
    """Self-teacher forward FLOPs per pyramid level and kind of layer (forward only: the
    module attribution of FlopCounterMode is reliable there, not in the backward)."""
    d, _, x, _ = build("frskd", opts)
    st = d.self_teacher
    feats = [f.detach() for f in d.student.features(x).stages[-d.levels:]]
    with flop_counter(depth=None) as fc:
        st(feats)
    counts = {name.split(".", 1)[1]: sum(c.values())
              for name, c in fc.get_flop_counts().items() if "." in name}
    table: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for name, m in st.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            kind, level = _kind_and_level(name, m)
            table[kind][level] += counts.get(name, 0)
    n = len(st.widths)
    sizes = " ".join(f"L{i} {w}x{f.shape[2]}x{f.shape[3]}"
                     for i, (w, f) in enumerate(zip(st.widths, feats, strict=True)))
    total = sum(v for row in table.values() for v in row.values())
    lines = [f"== self-teacher forward MFLOP per level fed and kind of convolution "
             f"({opts or 'defaults'}; level: channels x H x W: {sizes}; a resample 1x1 runs "
             "at the coarser size: before the upsampling, after the pooling)",
             f"{'':<28} " + " ".join(f"{'L' + str(i):>9}" for i in range(n)) + "   share"]
    for kind in sorted(table):
        cells = " ".join(f"{table[kind].get(i, 0) / 1e6:9.1f}" for i in range(n))
        lines.append(f"{kind:<28} {cells}   {100 * sum(table[kind].values()) / total:4.1f} %")
    per_level = [sum(row.get(i, 0) for row in table.values()) for i in range(n)]
    lines += [f"{'all':<28} " + " ".join(f"{v / 1e6:9.1f}" for v in per_level)
              + f"   total {total / 1e6:.1f} MFLOP, classifier "
              f"{counts.get('fc', 0) / 1e6:.2f}", ""]
    return lines


def part_table(steps: int, warmup: int) -> list[str]:
    lines = []
    for label, opts in FRSKD_VARIANTS.items():
        d, opt, x, y = build("frskd", opts)
        parts = Parts()
        instrument(d, parts)
        for _ in range(warmup):
            frskd_step(d, opt, x, y, parts)
        parts.seconds.clear()
        f0 = minor_faults()
        t0 = time.perf_counter()
        for _ in range(steps):
            frskd_step(d, opt, x, y, parts)
        total = time.perf_counter() - t0
        faults = (minor_faults() - f0) / steps
        seconds = dict(parts.seconds)
        seconds["losses (rest of the forward)"] = seconds.pop(FORWARD) - seconds[
            STUDENT_FWD] - seconds[TEACHER_FWD]
        lines += [f"== {label}: step split into parts, {steps} steps after {warmup} warm-up, "
                  f"{1000 * total / steps:.1f} ms/step, {faults:.0f} minor page faults/step",
                  f"{'part':<46} {'ms/step':>8} {'share':>6}"]
        for name, sec in sorted(seconds.items(), key=lambda kv: -kv[1]):
            lines.append(f"{name:<46} {1000 * sec / steps:8.2f} {100 * sec / total:5.1f}%")
        lines.append("")
    d, opt, x, y = build("kd", {})
    for _ in range(warmup):
        step(d, opt, x, y)
    f0 = minor_faults()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(d, opt, x, y)
    lines += [f"== kd for comparison: {1000 * (time.perf_counter() - t0) / steps:.1f} ms/step, "
              f"{(minor_faults() - f0) / steps:.0f} minor page faults/step", ""]
    return lines


def memory_table() -> list[str]:
    lines = ["== memory autograd keeps for the backward (distinct storages), batch 64",
             f"{'':<46} {'MiB':>7} {'self-teacher':>13} {'student + losses':>17}"]
    for label, method, opts in [("kd", "kd", {}), *(
            (k, "frskd", v) for k, v in FRSKD_VARIANTS.items())]:
        total, teacher, rest = saved_memory_mib(
            method, opts, lambda d: [d.self_teacher] if hasattr(d, "self_teacher") else [])
        lines.append(f"{label:<46} {total:7.1f} {teacher:13.1f} {rest:17.1f}")
    lines.append("")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--tables", default="flops,levels,memory,parts,profiler",
                    help="comma-separated subset of flops,levels,memory,parts,profiler")
    ap.add_argument("--layout", choices=["auto", "nchw"], default="auto",
                    help="self-teacher memory layout: bifpn.preferred_layout, or NCHW")
    args = ap.parse_args()
    if args.layout == "nchw":
        bifpn.preferred_layout = lambda device: torch.contiguous_format
    p = PRESETS["cpu"]
    load = load_average()
    print(f"frskd_profile: student {p.student} (kd: {p.teacher} -> {p.student}), input "
          f"{p.input_shape}, batch {p.batch}, random data, FRSKD defaults (alpha 2, beta 100, "
          f"width 2, depth 2, one BiFPN layer), self-teacher layout {args.layout}")
    print(f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; Python {platform.python_version()}; load at start "
          f"{load}")
    print()
    tables = {
        "flops": flop_table,
        "levels": lambda: level_table({}) + level_table({"levels": 4}),
        "memory": memory_table,
        "parts": lambda: part_table(args.steps, args.warmup),
        "profiler": lambda: profiler_tables("frskd", "FRSKD defaults", args.steps, args.rows),
    }
    for name in args.tables.split(","):
        for line in tables[name.strip()]():
            print(line)
    print(f"load at end {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
