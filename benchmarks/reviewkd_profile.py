"""Where ReviewKD's training step spends its time, FLOPs and memory (CPU profile of a few steps).

ReviewKD: Chen et al., CVPR 2021. For the ``cpu`` bench pair (resnet20 -> resnet8, 1x28x28,
batch 64) this script

1. counts the FLOPs of one training step for ce, kd and ReviewKD, ReviewKD's split into
   student forward, teacher forward, review (ABF) forward, HCL loss, the backward of the
   review branch (ABFs and HCL, down to the student's features) and the student's backward,
   and the review's forward FLOPs per ABF and layer;
2. checks for duplicated work in one step: calls of the student and the teacher, whether
   the teacher's features carry autograd history, nearest resizes (and those to the size
   the map already has), pools of the teacher side in HCL;
3. sums the bytes autograd keeps for the backward (distinct storages), kd against ReviewKD;
4. times the same parts over a few steps, with the minor page faults per step;
5. runs ``torch.profiler`` over a few steps: top operators by self CPU time, overall and by
   input shape.

``--layout nchw`` runs the ABFs in the default (NCHW) layout instead of
:func:`kdlab.nn.layout.preferred_layout`'s channels-last, to see what the layout buys. Runs on
older sources too (``PYTHONPATH=<old>/src``), for before/after comparisons.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reviewkd_profile.py > out.txt

Reuses ``fcfd_profile.py`` (builder, step, part timer) and ``profiling.py`` (FLOP counter,
page faults, saved storages). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from fcfd_profile import Parts, build, step
from profiling import (
    count_step,
    flop_counter,
    load_average,
    minor_faults,
    profiler_tables,
    saved_memory_mib,
)

import kdlab.methods.reviewkd.abf as abf
import kdlab.methods.reviewkd.reviewkd as reviewkd
from kdlab.tools.bench.bench import PRESETS, cpu_name

STUDENT_FWD = "student forward"
TEACHER_FWD = "teacher forward (inference mode)"
REVIEW_FWD = "review forward (ABFs)"
HCL = "HCL loss"
CE = "rest of the forward (CE)"
REVIEW_BWD = "backward: HCL and ABFs (to the student features)"
STUDENT_BWD = "backward: student (CE + review gradients)"
OPTIMISER = "optimiser (SGD step + zero_grad)"
PARTS = (STUDENT_FWD, TEACHER_FWD, REVIEW_FWD, HCL, CE, REVIEW_BWD, STUDENT_BWD, OPTIMISER)


class Instrumented:
    """A ReviewKD distiller whose calls are labelled by part (instance attributes and the
    module's ``hcl_loss`` name, restored by :meth:`close`; the classes are untouched)."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.d, self.opt, self.x, self.y = build("reviewkd", {})
        self.levels: list[torch.Tensor] = []  # the student's, as the review got them
        self.leaves: list[torch.Tensor] = []  # the same, detached: where the review starts
        parts.wrap(self.d.student, "features", STUDENT_FWD)
        parts.wrap(self.d.teacher_source, "features", TEACHER_FWD)
        review = self.d.review

        def captured(levels: list[torch.Tensor]) -> list[torch.Tensor]:
            self.levels = levels
            self.leaves = [t.detach().requires_grad_() for t in levels]
            return review(self.leaves)

        object.__setattr__(self.d, "review", captured)
        parts.wrap(self.d, "review", REVIEW_FWD)
        self._hcl = reviewkd.hcl_loss
        parts.wrap(reviewkd, "hcl_loss", HCL)

    def close(self) -> None:
        reviewkd.hcl_loss = self._hcl

    def step(self) -> None:
        """One training step, the backward in two calls: the review branch down to the
        student's features, then the student with those gradients and the CE (the same
        work as one ``backward``)."""
        parts, d = self.parts, self.d
        t0 = time.perf_counter()
        _, losses = d(self.x, self.y)
        parts.seconds[CE] += time.perf_counter() - t0
        with parts.part(REVIEW_BWD):
            losses["review"].backward(inputs=[*self.leaves, *d.abfs.parameters()])
        with parts.part(STUDENT_BWD):
            torch.autograd.backward([losses["ce"], *self.levels],
                                    [None, *(t.grad for t in self.leaves)])
        with parts.part(OPTIMISER):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.levels, self.leaves = [], []

    def forward_parts_seconds(self) -> dict[str, float]:
        """Part seconds with the forward's remainder (CE, bookkeeping) separated."""
        s = dict(self.parts.seconds)
        s[CE] = s.get(CE, 0.0) - sum(s.get(k, 0.0) for k in (STUDENT_FWD, TEACHER_FWD,
                                                               REVIEW_FWD, HCL))
        return s


def flop_table() -> list[str]:
    gf = 1e9
    ce, kd = count_step("ce", {}), count_step("kd", {})
    raw = count_step("reviewkd", {}, grouped_fix=False)
    parts = Parts()
    inst = Instrumented(parts)
    try:
        inst.step()
        with flop_counter() as fc:
            parts.counter = fc
            inst.step()
    finally:
        inst.close()
    total = fc.get_total_flops()
    lines = ["== FLOPs per training step (forward + backward; conv and matmul only), batch 64; "
             "'as torch counts' is FlopCounterMode's own convolution_backward formula",
             f"{'':<52} {'GFLOP':>8} {'x kd':>6} {'share':>7}",
             f"{'ce (student alone)':<52} {ce / gf:8.3f} {ce / kd:6.2f}",
             f"{'kd (resnet20 teacher forward + student)':<52} {kd / gf:8.3f} {1.0:6.2f}",
             f"{'reviewkd':<52} {total / gf:8.3f} {total / kd:6.2f}   as torch counts "
             f"{raw / gf:.3f}"]
    for name in PARTS:
        f = parts.flops.get(name, 0)
        lines.append(f"  {name:<50} {f / gf:8.3f} {f / kd:6.2f} {100 * f / total:6.1f} %")
    return [*lines, ""]


def abf_table() -> list[str]:
    """Review forward FLOPs per ABF (deepest first, as they run) and layer; the attention
    is whatever an ABF counts outside its conv1 and conv2."""
    d, _, x, _ = build("reviewkd", {})
    fc = flop_counter()
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def tally(module: torch.nn.Module, i: int, key: str) -> None:
        forward = module.forward

        def counted(*a: Any) -> Any:
            f0 = fc.get_total_flops()
            out = forward(*a)
            counts[i][key] += fc.get_total_flops() - f0
            return out

        object.__setattr__(module, "forward", counted)

    for i, m in enumerate(d.abfs):
        tally(m, i, "all")
        tally(m.conv1, i, "conv1")
        tally(m.conv2, i, "conv2")
    levels = reviewkd._levels(d.student.features(x), d.num_stages)
    with fc:
        fused = d.review(levels)
    mid = d.abfs[0].conv1[0].out_channels
    lines = ["== review forward MFLOP per ABF (student map -> teacher map; the fusion runs "
             f"at the student's size with {mid} channels)",
             f"{'ABF':<5} {'student':>12} {'teacher':>12} {'conv1 1x1':>10} "
             f"{'attention':>10} {'conv2 3x3':>10}"]
    rows = []
    for i in reversed(range(len(d.abfs))):
        c1, c2 = counts[i]["conv1"], counts[i]["conv2"]
        rows.append((c1, counts[i]["all"] - c1 - c2, c2))
        shape_s = "x".join(str(v) for v in levels[i].shape[1:])
        shape_t = "x".join(str(v) for v in fused[i].shape[1:])
        lines.append(f"{i:<5} {shape_s:>12} {shape_t:>12} "
                     + " ".join(f"{v / 1e6:10.1f}" for v in rows[-1]))
    sums = [sum(col) for col in zip(*rows, strict=True)]
    lines.append(f"{'all':<5} {'':>12} {'':>12} " + " ".join(f"{v / 1e6:10.1f}" for v in sums)
                 + f"   total {sum(sums) / 1e6:.1f}")
    return [*lines, ""]


@contextlib.contextmanager
def counting(obj: Any, attr: str, tally: Counter[str],
             label: Any = lambda *a, **k: "") -> Iterator[None]:
    """Count calls of ``obj.attr`` in ``tally`` under ``attr + label(args)``."""
    fn = getattr(obj, attr)

    def counted(*a: Any, **k: Any) -> Any:
        tally[attr + label(*a, **k)] += 1
        return fn(*a, **k)

    setattr(obj, attr, counted)
    try:
        yield
    finally:
        setattr(obj, attr, fn)


def checks_table() -> list[str]:
    """Calls in one training step that may hide duplicated work."""
    d, opt, x, y = build("reviewkd", {})
    tally: Counter[str] = Counter()

    def resize(t: torch.Tensor, size: Any = None, **k: Any) -> str:
        return " (to the size it has)" if tuple(t.shape[-2:]) == tuple(size) else " (resize)"

    def pooled(t: torch.Tensor, *a: Any) -> str:
        return " (teacher side, its global pool too)" if not t.requires_grad else (
            " (student side, its global pool too)")

    teacher_grad: list[bool] = []
    features = d.teacher_source.features

    def teacher_features(batch: Any) -> Any:
        out = features(batch)
        teacher_grad.append(any(t.requires_grad or t.grad_fn is not None for t in out.stages))
        return out

    object.__setattr__(d.teacher_source, "features", teacher_features)
    with (counting(d.student, "features", tally, lambda *a: " (student)"),
          counting(d.teacher, "features", tally, lambda *a: " (teacher)"),
          counting(F, "interpolate", tally, resize),
          counting(F, "adaptive_avg_pool2d", tally, pooled)):
        step(d, opt, x, y)
    lines = ["== calls in one ReviewKD training step (duplicated work?)"]
    lines += [f"  {name:<52} {n:4d}" for name, n in sorted(tally.items())]
    lines.append(f"  {'teacher features carry autograd history':<52} {any(teacher_grad)!s:>5}")
    return [*lines, ""]


def memory_table() -> list[str]:
    lines = ["== memory autograd keeps for the backward (distinct storages), batch 64",
             f"{'':<30} {'MiB':>7} {'ABFs':>7} {'student + HCL':>14}"]
    for method in ("kd", "reviewkd"):
        total, review, rest = saved_memory_mib(method, {}, lambda d: getattr(d, "abfs", []))
        lines.append(f"{method:<30} {total:7.1f} {review:7.1f} {rest:14.1f}")
    return [*lines, ""]


def timed_steps(run: Any, steps: int, warmup: int) -> tuple[float, float]:
    """``run()`` ``steps`` times after ``warmup``: (ms per step, minor page faults per step)."""
    for _ in range(warmup):
        run()
    f0 = minor_faults()
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    return 1000 * (time.perf_counter() - t0) / steps, (minor_faults() - f0) / steps


def part_table(steps: int, warmup: int) -> list[str]:
    kd_ms, kd_faults = timed_steps(functools.partial(step, *build("kd", {})), steps, warmup)
    parts = Parts()
    inst = Instrumented(parts)
    try:
        for _ in range(warmup):
            inst.step()
        parts.seconds.clear()
        ms, faults = timed_steps(inst.step, steps, 0)
    finally:
        inst.close()
    lines = [f"== reviewkd: step split into parts, {steps} steps after {warmup} warm-up, "
             f"{ms:.1f} ms/step, {faults:.0f} minor page faults/step; kd before it "
             f"{kd_ms:.1f} ms/step, {kd_faults:.0f} faults/step (ratio {ms / kd_ms:.2f})",
             f"{'part':<52} {'ms/step':>8} {'share':>6}"]
    seconds = inst.forward_parts_seconds()
    for name in PARTS:
        sec = seconds.get(name, 0.0)
        lines.append(f"{name:<52} {1000 * sec / steps:8.2f} {100 * sec / steps / ms * 1000:5.1f}%")
    return [*lines, ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--tables", default="flops,abf,checks,memory,parts,profiler",
                    help="comma-separated subset of flops,abf,checks,memory,parts,profiler")
    ap.add_argument("--layout", choices=["auto", "nchw"], default="auto",
                    help="ABF memory layout: bifpn.preferred_layout, or NCHW")
    args = ap.parse_args()
    if args.layout == "nchw" and hasattr(abf, "preferred_layout"):
        abf.preferred_layout = lambda device: torch.contiguous_format
    p = PRESETS["cpu"]
    print(f"reviewkd_profile: {p.teacher} -> {p.student}, input {p.input_shape}, batch "
          f"{p.batch}, random data, ReviewKD defaults (past the warm-up), ABF layout "
          f"{args.layout}; abf.py {'with' if hasattr(abf, 'preferred_layout') else 'without'} "
          "a layout choice")
    print(f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; Python {platform.python_version()}; load at start "
          f"{load_average()}")
    print()
    tables = {
        "flops": flop_table,
        "abf": abf_table,
        "checks": checks_table,
        "memory": memory_table,
        "parts": lambda: part_table(args.steps, args.warmup),
        "profiler": lambda: profiler_tables("reviewkd", "ReviewKD defaults", args.steps,
                                              args.rows),
    }
    for name in args.tables.split(","):
        for line in tables[name.strip()]():
            print(line)
    print(f"load at end {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
