"""FCFD's step before/after path batching, against KD and the CPU's large-matmul rate.

FCFD: Liu et al., ICLR 2023. For the ``cifar`` bench pair (resnet32x4 -> resnet8x4, 3x32x32,
100 classes, batch 64; the paper's Table 11 setting) this script builds, with equal weights,

* ``kd`` (the reference step),
* ``fcfd:path_batching=false`` (one pass per sampled path, the implementation before),
* ``fcfd:path_batching=true`` (the paths through the same network as one batch),

and times them in paired, interleaved rounds in one process. Round ``r`` forces the |S| = 2
path pair ``r mod 6`` on both FCFD variants (the six pairs of the four candidates are equally
likely under the method's sampling, so the mean over a multiple of six rounds is the
expectation), and times a large ``torch.mm`` before and after the round's steps. FLOPs per
step come from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, forward
and backward) for every pair. Reported per round and summarised:

* ms/step of each variant and the ratio batched / per path (same round, same pair);
* achieved GFLOP/s of each step and its fraction of the matmul rate of the same round;
* FCFD / KD time ratio against the FLOP ratio (the issue's "<= 1.05 x FLOP ratio").

``--paths-only REPS`` times only what batching changes: the two paths through the same
network (their forward, terms and backward), per path and batched, alternating.
``--conv-rates`` times the pair's 3x3 convolutions alone (batch 64 / 128, NCHW / channels-last)
against the matmul.
``--profile`` adds a per-operator split (``torch.profiler``) of one KD step and one FCFD step
of each variant on a same-network pair, with the convolutions' FLOP rates: where the time
goes that is not at the matmul rate.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/fcfd_batching.py --rounds 12 \
        --steps 2 --profile > benchmarks/results/fcfd_batching_cpu.txt

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from kdlab.core.version import __version__
from kdlab.methods import build_distiller
from kdlab.methods.base import Batch
from kdlab.models import build_model
from kdlab.tools.bench.bench import PRESETS, cpu_name

Path = tuple[int, int]


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Runner:
    """One distiller, its optimiser and the fixed batch (forward, backward, SGD step)."""

    def __init__(self, method: str, options: dict[str, Any], preset: str,
                 state: dict[str, torch.Tensor] | None = None,
                 channels_last: bool = False) -> None:
        p = PRESETS[preset]
        shape = dict(num_classes=p.num_classes, in_channels=p.input_shape[0],
                     input_size=p.input_shape[1])
        torch.manual_seed(0)
        student = build_model(p.student, **shape)
        teacher = build_model(p.teacher, **shape)
        self.d = build_distiller(method, options, student, teacher, train_size=p.train_size)
        if state is not None:
            self.d.load_state_dict(state)
        self.d.train()
        self.d.set_epoch(100, 200)  # past the L2 warm-up: every term at full weight
        self.opt = torch.optim.SGD([q for q in self.d.parameters() if q.requires_grad],
                                   lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(p.batch, *p.input_shape, generator=g)
        if channels_last:  # the distiller's _apply converts the frozen teacher too
            self.d.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, p.num_classes, (p.batch,), generator=g)

    def force(self, paths: list[Path]) -> None:
        self.d.sample_paths = lambda: list(paths)

    def step(self) -> None:
        _, losses = self.d(self.x, self.y)
        sum(losses.values()).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - t0) / steps

    def flops(self) -> int:
        with FlopCounterMode(display=False) as fc:
            self.step()
        return fc.get_total_flops()


def matmul_rate(n: int = 2048, reps: int = 4) -> float:
    """FLOP/s of a large square fp32 ``torch.mm`` (the machine's dense rate)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def op_split(r: Runner, label: str, mm: float) -> list[str]:
    """Self CPU time by operator group for one step, with the convolutions' FLOP rate."""
    with FlopCounterMode(display=False) as fc:
        r.step()
    by_op = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        r.step()
    groups = {"conv forward": ("aten::mkldnn_convolution", "aten::convolution_overrideable",
                               "aten::_slow_conv2d_forward", "aten::slow_conv_transpose2d"),
              "conv backward": ("aten::convolution_backward",),
              "batch norm fwd+bwd": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
              "linear (mm/addmm)": ("aten::addmm", "aten::mm")}
    secs: dict[str, float] = defaultdict(float)
    total = 0.0
    for e in prof.key_averages():
        s = e.self_cpu_time_total / 1e6
        total += s
        for g, names in groups.items():
            if e.key in names:
                secs[g] += s
                break
        else:
            secs["elementwise, copies, cat, losses, Python"] += s
    fl = {"conv forward": by_op.get("aten.convolution", 0),
          "conv backward": by_op.get("aten.convolution_backward", 0),
          "linear (mm/addmm)": by_op.get("aten.addmm", 0) + by_op.get("aten.mm", 0)}
    lines = [f"-- {label}: {total * 1000:.0f} ms self CPU under the profiler, "
             f"{sum(by_op.values()) / 1e9:.1f} GFLOP"]
    for g in (*groups, "elementwise, copies, cat, losses, Python"):
        rate = fl.get(g, 0) / secs[g] / mm if secs[g] and fl.get(g) else None
        rate_s = f"{rate:5.2f} x mm" if rate is not None else "    -    "
        lines.append(f"   {g:<42} {secs[g] * 1000:8.0f} ms {100 * secs[g] / total:5.1f}%  "
                     f"{rate_s}")
    return lines


def paths_only(preset: str, teacher_bn: str, reps: int) -> list[str]:
    """Only the part path batching changes: the two paths through one network (forward of
    their terms and backward to their inputs and the network's weights), per path and
    batched, alternating ``reps`` times, with the matmul rate around each repetition."""
    opts = {"num_paths": 2, "teacher_bn": teacher_bn}
    ref = Runner("fcfd", {**opts, "path_batching": False}, preset)
    new = Runner("fcfd", {**opts, "path_batching": True}, preset, state=ref.d.state_dict())
    d = ref.d
    with torch.no_grad():
        t = d.teacher_source.features(Batch(ref.x))
        s = d.student.features(ref.x)
    lines = [f"== paths only (teacher_bn={teacher_bn}): the same-network pair's forward + "
             "backward, per path (pp) vs batched (bat), alternating"]
    for delta in (1, 0):
        ks = [k for k, dd in d.candidates if dd == delta]
        paths = [(k, delta) for k in ks]

        def run(r: Runner, batched: bool, paths: list[Path] = paths) -> float:
            leaf = {k: f.detach().requires_grad_() for k, f in enumerate(s.stages, 1)}
            bridged = {k: r.d.b_st[str(k)](leaf[k]) for k, dd in paths if dd == 1}
            t0 = time.perf_counter()
            if batched:
                terms = list(r.d._batched_paths(paths, bridged, s, t, t, ref.y).values())
            else:
                terms = [r.d._through_teacher(k, bridged[k], t, ref.y) if dd == 1 else
                         r.d._through_student(k, s, t, t, ref.y) for k, dd in paths]
            sum(v for term in terms for v in term.values()).backward()
            r.opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0

        run(ref, False)
        run(new, True)
        ratios, pp, bat, mms = [], [], [], []
        for i in range(reps):
            mm0 = matmul_rate()
            if i % 2:
                b_, p_ = run(new, True), run(ref, False)
            else:
                p_, b_ = run(ref, False), run(new, True)
            mms.append((mm0 + matmul_rate()) / 2)
            pp.append(p_)
            bat.append(b_)
            ratios.append(b_ / p_)
        with FlopCounterMode(display=False) as fc:
            run(ref, False)
        fl = fc.get_total_flops()
        lines.append(
            f"{str(paths):<18} {fl / 1e9:6.1f} GFLOP  per path {1000 * statistics.median(pp):7.0f}"
            f" ms ({statistics.median(fl / a / m for a, m in zip(pp, mms, strict=True)):.2f} x mm)"
            f"  batched {1000 * statistics.median(bat):7.0f} ms "
            f"({statistics.median(fl / a / m for a, m in zip(bat, mms, strict=True)):.2f} x mm)"
            f"  bat/pp median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-"
            f"{max(ratios):.3f}, {reps} reps)  mm {statistics.median(mms) / 1e9:.1f} GF/s  "
            f"load {load()}")
    return lines


def conv_rates(rounds: int = 3) -> list[str]:
    """The 3x3 convolutions of the cifar pair's stages alone (batch 64 and 128, NCHW and
    channels-last; forward, forward + input gradient (a frozen-teacher path), forward + both
    gradients) as a fraction of the 2048^2 matmul rate measured around them."""
    res: dict[tuple[int, int, int, str], list[tuple[float, ...]]] = defaultdict(list)
    big = []
    for _ in range(rounds):
        mm = matmul_rate()
        big.append(matmul_rate(4096, 2) / mm)
        for c, h in ((64, 32), (128, 16), (256, 8)):
            for b in (64, 128):
                for fmt in (torch.contiguous_format, torch.channels_last):
                    conv = torch.nn.Conv2d(c, c, 3, 1, 1, bias=False).to(memory_format=fmt)
                    x = torch.randn(b, c, h, h).contiguous(memory_format=fmt).requires_grad_()
                    f = 2 * b * c * c * 9 * h * h
                    g = torch.randn_like(conv(x))
                    rates = []
                    for flops, fn in (
                        (f, lambda conv=conv, x=x: conv(x)),
                        (2 * f, lambda conv=conv, x=x, g=g: torch.autograd.grad(
                            conv(x), x, g)),
                        (3 * f, lambda conv=conv, x=x, g=g: torch.autograd.grad(
                            conv(x), [x, conv.weight], g)),
                    ):
                        fn()
                        t0 = time.perf_counter()
                        fn()
                        fn()
                        rates.append(2 * flops / (time.perf_counter() - t0) / mm)
                    name = "nchw" if fmt is torch.contiguous_format else "channels_last"
                    res[c, h, b, name].append(tuple(rates))
    lines = ["== 3x3 convolutions alone, fraction of the 2048^2 matmul rate (median of "
             f"{rounds}); 4096^2 matmul / 2048^2 matmul {statistics.median(big):.2f}",
             f"{'C x HxW, batch, layout':<34} {'fwd':>5} {'fwd+dx':>7} {'fwd+dx+dw':>10}"]
    for (c, h, b, name), v in res.items():
        med = [statistics.median(r[i] for r in v) for i in range(3)]
        lines.append(f"{f'{c} x {h}x{h}, {b}, {name}':<34} {med[0]:5.2f} {med[1]:7.2f} "
                     f"{med[2]:10.2f}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cifar")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--teacher-bn", default="eval", choices=["eval", "batch"])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--paths-only", type=int, default=0, metavar="REPS",
                    help="only time the same-network path pairs, REPS alternations each")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time kd and batched fcfd in channels-last memory format")
    ap.add_argument("--conv-rates", action="store_true",
                    help="only time the pair's 3x3 convolutions alone against the matmul")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    print(f"fcfd_batching: {p.teacher} -> {p.student}, input {p.input_shape}, batch {p.batch}, "
          f"random data, FCFD defaults (|S|=2 forced pair per round, teacher_bn="
          f"{args.teacher_bn})")
    print(f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; Python {platform.python_version()}; kdlab {__version__}; "
          f"load at start {load()}")

    if args.conv_rates:
        for line in conv_rates():
            print(line, flush=True)
        print(f"load at end {load()}")
        return 0
    if args.paths_only:
        for line in paths_only(args.preset, args.teacher_bn, args.paths_only):
            print(line, flush=True)
        print(f"load at end {load()}")
        return 0
    kd = Runner("kd", {}, args.preset)
    opts = {"num_paths": 2, "teacher_bn": args.teacher_bn}
    ref = Runner("fcfd", {**opts, "path_batching": False}, args.preset)
    new = Runner("fcfd", {**opts, "path_batching": True}, args.preset,
                 state=ref.d.state_dict())
    pairs = [list(c) for c in itertools.combinations(ref.d.candidates, 2)]
    cl = ({"kd_cl": Runner("kd", {}, args.preset, channels_last=True),
           "new_cl": Runner("fcfd", {**opts, "path_batching": True}, args.preset,
                            state=ref.d.state_dict(), channels_last=True)}
          if args.channels_last else {})

    # FLOPs per step (also the warm-up: every shape each variant will see, once)
    f_kd = kd.flops()
    f_pair: list[int] = []
    for pair in pairs:
        ref.force(pair)
        new.force(pair)
        f_ref, f_new = ref.flops(), new.flops()
        if f_ref != f_new:
            print(f"note: FLOPs differ for {pair}: per path {f_ref}, batched {f_new}")
        f_pair.append(f_ref)
        if cl:
            cl["new_cl"].force(pair)
            cl["new_cl"].step()  # warm-up of the channels-last shapes
    if cl:
        cl["kd_cl"].step()
    print(f"\n== FLOPs per step: kd {f_kd / 1e9:.1f} GFLOP; fcfd |S|=2 by pair: "
          + ", ".join(f"{pr} {f / 1e9:.1f}" for pr, f in zip(pairs, f_pair, strict=True))
          + f"; expectation {statistics.fmean(f_pair) / 1e9:.1f} GFLOP = "
          f"{statistics.fmean(f_pair) / f_kd:.3f} x kd")

    print(f"\n== rounds ({args.steps} timed steps per variant per round, order alternates)")
    print(f"{'rnd':>3} {'pair':<18} {'mm GF/s':>7} {'kd ms':>7} {'per-path ms':>11} "
          f"{'batched ms':>10} {'bat/pp':>6} {'kd %mm':>6} {'pp %mm':>6} {'bat %mm':>7} "
          f"{'pp/kd':>6} {'bat/kd':>6} {'FLOP/kd':>7}  load")
    rows = []
    for rnd in range(args.rounds):
        i = rnd % len(pairs)
        ref.force(pairs[i])
        new.force(pairs[i])
        if cl:
            cl["new_cl"].force(pairs[i])
        mm0 = matmul_rate()
        order = [("kd", kd), ("ref", ref), ("new", new), *cl.items()]
        if rnd % 2:
            order.reverse()
        ms = {name: r.timed(args.steps) for name, r in order}
        mm = (mm0 + matmul_rate()) / 2
        row = dict(pair=i, mm=mm, kd=ms["kd"], ref=ms["ref"], new=ms["new"],
                   kd_frac=f_kd / ms["kd"] / mm, ref_frac=f_pair[i] / ms["ref"] / mm,
                   new_frac=f_pair[i] / ms["new"] / mm, flop_ratio=f_pair[i] / f_kd)
        if cl:
            row.update(kd_cl=ms["kd_cl"], new_cl=ms["new_cl"],
                       kd_cl_frac=f_kd / ms["kd_cl"] / mm,
                       new_cl_frac=f_pair[i] / ms["new_cl"] / mm)
        rows.append(row)
        print(f"{rnd:>3} {str(pairs[i]):<18} {mm / 1e9:7.1f} {1000 * ms['kd']:7.0f} "
              f"{1000 * ms['ref']:11.0f} {1000 * ms['new']:10.0f} "
              f"{ms['new'] / ms['ref']:6.3f} {row['kd_frac']:6.2f} {row['ref_frac']:6.2f} "
              f"{row['new_frac']:7.2f} {ms['ref'] / ms['kd']:6.3f} {ms['new'] / ms['kd']:6.3f} "
              f"{row['flop_ratio']:7.3f}  {load()}"
              + (f"  channels-last: kd {1000 * ms['kd_cl']:.0f} ms ({row['kd_cl_frac']:.2f}), "
                 f"batched {1000 * ms['new_cl']:.0f} ms ({row['new_cl_frac']:.2f})"
                 if cl else ""), flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def mean_ratio(key: str) -> float:
        return statistics.fmean(r[key] / r["kd"] for r in rows)

    flop_ratio = statistics.fmean(r["flop_ratio"] for r in rows)
    print("\n== summary (medians over rounds; ratios to kd are means over rounds of the "
          "same-round ratio, i.e. the expectation over the pairs drawn)")
    print(f"matmul rate                      {med('mm') / 1e9:.1f} GFLOP/s")
    print(f"kd      ms/step {1000 * med('kd'):7.0f}   fraction of mm {med('kd_frac'):.2f}")
    for key, label in (("ref", "per path"), ("new", "batched")):
        r = mean_ratio(key)
        print(f"fcfd {label:<9} ms/step {1000 * med(key):7.0f}   fraction of mm "
              f"{med(key + '_frac'):.2f}   time/kd {r:.3f}   FLOP/kd {flop_ratio:.3f}   "
              f"(time/kd) / (FLOP/kd) {r / flop_ratio:.3f}")
    if cl:
        r = statistics.fmean(row["new_cl"] / row["kd_cl"] for row in rows)
        print(f"channels-last: kd ms/step {1000 * med('kd_cl'):7.0f}   fraction of mm "
              f"{med('kd_cl_frac'):.2f}; fcfd batched ms/step {1000 * med('new_cl'):7.0f}   "
              f"fraction of mm {med('new_cl_frac'):.2f}   time/kd(channels-last) {r:.3f}   "
              f"(time/kd) / (FLOP/kd) {r / flop_ratio:.3f}")
    print(f"batched / per path (same round): median "
          f"{statistics.median(r['new'] / r['ref'] for r in rows):.3f}, range "
          f"{min(r['new'] / r['ref'] for r in rows):.3f}-"
          f"{max(r['new'] / r['ref'] for r in rows):.3f}")
    same_net = [i for i, pr in enumerate(pairs) if pr[0][1] == pr[1][1]]
    grouped = [r["new"] / r["ref"] for r in rows if r["pair"] in same_net]
    if grouped:
        print(f"  on same-network pairs only ({[pairs[i] for i in same_net]}): median "
              f"{statistics.median(grouped):.3f} over {len(grouped)} rounds")

    if args.profile:
        print("\n== where the time goes (one step each, profiler self CPU time; rates are "
              "the op group's FLOPs / its self time, as a fraction of the matmul rate)")
        mm = matmul_rate()
        print(f"matmul rate {mm / 1e9:.1f} GFLOP/s, load {load()}")
        for line in op_split(kd, "kd", mm):
            print(line)
        for i in same_net:
            ref.force(pairs[i])
            new.force(pairs[i])
            for line in op_split(ref, f"fcfd per path {pairs[i]}", mm) + op_split(
                    new, f"fcfd batched {pairs[i]}", mm):
                print(line)
    print(f"\nload at end {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
