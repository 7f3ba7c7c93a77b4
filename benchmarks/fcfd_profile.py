"""Where FCFD's training step spends its time and FLOPs (CPU profile of a few steps).

FCFD: Liu et al., ICLR 2023. For the ``cpu`` bench pair (resnet20 -> resnet8, 1x28x28,
batch 64) this script

1. counts the FLOPs of one training step (``torch.utils.flop_counter``) for ce, kd and FCFD
   with no path, with every single candidate path ``<k, delta>`` alone, and the expectation
   for ``|S|`` sampled paths, so the measured time ratio to KD can be checked against the
   FLOP ratio;
2. times a few FCFD steps split into parts (teacher forward, student forward, bridges,
   paths through the teacher, paths through the student, losses, backward, optimiser) by
   wrapping those calls, without changing the method;
3. runs ``torch.profiler`` over a few steps and prints the top operators.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fcfd_profile.py > \
        benchmarks/results/fcfd_profile_cpu.txt

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from kdlab.methods import METHODS, build_distiller
from kdlab.models import build_model
from kdlab.tools.bench.bench import PRESETS, cpu_name

FORWARD = "_forward_total"


class Parts:
    """Accumulates wall time and FLOPs per named part; only the outermost part counts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.current: str | None = None
        self.counter: FlopCounterMode | None = None

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if self.current is not None:  # nested call (e.g. teacher stages inside its forward)
            yield
            return
        self.current = name
        f0 = self.counter.get_total_flops() if self.counter else 0
        t0 = time.perf_counter()
        try:
            with record_function(f"## {name}"):
                yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            if self.counter:
                self.flops[name] += self.counter.get_total_flops() - f0
            self.current = None

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        fn: Callable[..., Any] = getattr(obj, attr)

        @functools.wraps(fn)
        def wrapped(*a: Any, **k: Any) -> Any:
            with self.part(name):
                return fn(*a, **k)

        object.__setattr__(obj, attr, wrapped)


def build(method: str, options: dict[str, Any], preset: str = "cpu") -> tuple[Any, ...]:
    p = PRESETS[preset]
    shape = dict(num_classes=p.num_classes, in_channels=p.input_shape[0],
                 input_size=p.input_shape[1])
    torch.manual_seed(0)
    student = build_model(p.student, **shape)
    teacher = build_model(p.teacher, **shape) if METHODS.get(method).needs_teacher else None
    d = build_distiller(method, options, student, teacher, train_size=p.train_size)
    d.train()
    d.set_epoch(100, 200)  # past any warm-up: every term at full weight
    opt = torch.optim.SGD([q for q in d.parameters() if q.requires_grad], lr=0.05,
                          momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(p.batch, *p.input_shape, generator=g)
    y = torch.randint(0, p.num_classes, (p.batch,), generator=g)
    return d, opt, x, y


def instrument(d: Any, parts: Parts) -> None:
    """Label FCFD's calls by part (instance attributes; the classes are untouched)."""
    parts.wrap(d.teacher_source, "features", "teacher forward (inference mode)")
    parts.wrap(d.student, "features", "student forward")
    parts.wrap(d.teacher, "run_from", "paths <k,1>: bridged student feature through teacher")
    parts.wrap(d.teacher, "stage_forward", "paths <k,1>: bridged student feature through teacher")
    parts.wrap(d.teacher, "embed", "L_app pooled term: teacher pre-pool + pool")
    parts.wrap(d.teacher, "run_from_many", "paths <k,1>: bridged student feature through teacher")
    parts.wrap(d.student, "run_from", "paths <k,0>: bridged teacher feature through student")
    parts.wrap(d.student, "run_from_many",
               "paths <k,0>: bridged teacher feature through student")
    for m in list(d.b_st.values()) + list(d.b_ts.values()):
        parts.wrap(m, "forward", "bridges B_st / B_ts")


def step(d: Any, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         parts: Parts | None = None) -> None:
    ctx = parts.part if parts else (lambda _n: contextlib.nullcontext())
    t0 = time.perf_counter()
    _, losses = d(x, y)
    loss = sum(losses.values())
    if parts:
        parts.seconds[FORWARD] += time.perf_counter() - t0
    with ctx("backward"):
        loss.backward()
    with ctx("optimiser (SGD step + zero_grad)"):
        opt.step()
        opt.zero_grad(set_to_none=True)


def step_flops(method: str, options: dict[str, Any], steps: int = 1) -> float:
    d, opt, x, y = build(method, options)
    step(d, opt, x, y)  # untimed, also builds optimiser state
    with FlopCounterMode(display=False) as fc:
        for _ in range(steps):
            step(d, opt, x, y)
    return fc.get_total_flops() / steps


def flop_table() -> list[str]:
    gf = 1e9
    lines = ["== FLOPs per training step (forward + backward + SGD; FlopCounterMode counts "
             "matmul/conv only), batch 64"]
    ce = step_flops("ce", {})
    kd = step_flops("kd", {})
    base = step_flops("fcfd", {"num_paths": 0})
    lines.append(f"ce                       {ce / gf:8.3f} GFLOP   {ce / kd:5.2f} x kd")
    lines.append(f"kd                       {kd / gf:8.3f} GFLOP   {1.0:5.2f} x kd")
    lines.append(f"fcfd |S|=0 (L_app only)  {base / gf:8.3f} GFLOP   {base / kd:5.2f} x kd")
    d, *_ = build("fcfd", {})
    per_path = []
    for k, delta in d.candidates:
        opts = {"num_paths": 1, "positions": [k], "directions": "s2t" if delta else "t2s"}
        f = step_flops("fcfd", opts) - base
        per_path.append(f)
        lines.append(f"  + path <{k},{delta}>            {f / gf:8.3f} GFLOP   "
                     f"{f / kd:5.2f} x kd")
    mean_path = statistics.fmean(per_path)
    for s in (1, 2, len(per_path)):
        exp = base + s * mean_path
        lines.append(f"fcfd |S|={s} (expected)    {exp / gf:8.3f} GFLOP   {exp / kd:5.2f} x kd")
    lines.append("")
    return lines


def part_table(steps: int, warmup: int) -> list[str]:
    d, opt, x, y = build("fcfd", {})
    parts = Parts()
    instrument(d, parts)
    for _ in range(warmup):
        step(d, opt, x, y)
    parts.seconds.clear()  # the wrappers also counted the warm-up steps
    torch.manual_seed(1)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(d, opt, x, y, parts)
    total = time.perf_counter() - t0
    seconds = dict(parts.seconds)
    # FLOPs per part over the same number of steps with the same path draws
    d2, opt2, x2, y2 = build("fcfd", {})
    p2 = Parts()
    instrument(d2, p2)
    step(d2, opt2, x2, y2)
    p2.seconds.clear()
    torch.manual_seed(1)
    with FlopCounterMode(display=False) as fc:
        p2.counter = fc
        for _ in range(steps):
            step(d2, opt2, x2, y2, p2)
    named = sum(v for k, v in seconds.items()
                if k not in (FORWARD, "backward", "optimiser (SGD step + zero_grad)"))
    seconds["losses, sampling, clones (rest of the forward)"] = seconds.pop(FORWARD) - named
    lines = [f"== FCFD |S|=2 step split into parts: {steps} steps after {warmup} warm-up, "
             f"{1000 * total / steps:.1f} ms/step (wall, includes the wrappers)",
             f"{'part':<58} {'ms/step':>8} {'share':>6} {'GFLOP/step':>10}"]
    for name, sec in sorted(seconds.items(), key=lambda kv: -kv[1]):
        fl = p2.flops.get(name, 0) / steps / 1e9
        lines.append(f"{name:<58} {1000 * sec / steps:8.2f} {100 * sec / total:5.1f}% "
                     f"{fl:10.3f}")
    lines.append("(the backward of every part is in 'backward'; FLOPs of the rest of the "
                 "forward are the loss terms' own.)")
    lines.append("")
    return lines


def profiler_table(steps: int, rows: int) -> list[str]:
    d, opt, x, y = build("fcfd", {})
    parts = Parts()
    instrument(d, parts)
    for _ in range(3):
        step(d, opt, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(d, opt, x, y, parts)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return [f"== torch.profiler, FCFD |S|=2, {steps} steps: top operators by self CPU time "
            "('## ...' rows are the parts above)", table, ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    p = PRESETS["cpu"]
    load = " ".join(open("/proc/loadavg").read().split()[:3])
    print(f"fcfd_profile: {p.teacher} -> {p.student}, input {p.input_shape}, batch {p.batch}, "
          f"random data, FCFD defaults (|S|=2, k in {{2,3}}, L_app at 2..4)")
    print(f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; Python {platform.python_version()}; load at start "
          f"{load}")
    print()
    for line in flop_table() + part_table(args.steps, args.warmup) + profiler_table(
            args.steps, args.rows):
        print(line)
    print(f"load at end {' '.join(open('/proc/loadavg').read().split()[:3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
