"""``kdlab bench --scaling``: how a step's time grows with batch size, image size, FCFD's number
of sampled paths |S| and CRD's memory-bank size (its negatives per sample).

Each axis is swept over a few points around the preset's value, every other setting held at
the preset's; each point is one build and ``steps`` timed steps of :func:`bench_method` (with
its FLOP count). The growth per axis is summarised by the exponent of a least-squares line
through (log value, log ms/iter): 1 is linear, below 1 means fixed costs (Python, small kernels)
still weigh, above 1 super-linear growth. Written as a Markdown table, a CSV and a log-log plot
(matplotlib, Agg backend).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kdlab.errors import UserError
from kdlab.runtime.files import atomic_write_text
from kdlab.tools.bench.bench import PRESETS, MethodSpec, Preset, _prime, bench_method, parse_methods

AXES = ("batch", "image", "paths", "bank")
#: what each axis varies, as written in the tables
AXIS_LABEL = {"batch": "batch size", "image": "image side (pixels)",
              "paths": "FCFD |S| (method.num_paths)",
              "bank": "CRD negatives (method.num_negatives)"}
#: FCFD's |S| values and CRD's bank sizes swept (16384 is the CRD paper's)
PATHS = (1, 2, 3, 4)
BANKS = (1024, 4096, 16384)


@dataclass
class ScalingPoint:
    axis: str
    value: int
    method: str
    ms_mean: float
    ms_std: float
    images_per_s: float
    gflop: float | None


def parse_axes(text: str) -> list[str]:
    """``"batch,paths"`` or ``"all"`` -> the axes, checked."""
    axes = (list(AXES) if text.strip() == "all"
            else [a.strip() for a in text.split(",") if a.strip()])
    unknown = [a for a in axes if a not in AXES]
    if unknown or not axes:
        raise UserError(f"--scaling {text!r}: use 'all' or a comma-separated list of "
                        f"{', '.join(AXES)}.")
    return axes


def axis_points(axis: str, preset: Preset, specs: Sequence[MethodSpec]
                ) -> list[tuple[int, MethodSpec, int, tuple[int, int, int]]]:
    """(value, method, batch, input shape) of every point of ``axis``."""
    b, (c, h, w) = preset.batch, preset.input_shape
    if axis == "batch":
        return [(v, s, v, (c, h, w)) for v in sorted({max(2, b // 4), max(2, b // 2), b, 2 * b})
                for s in specs]
    if axis == "image":
        return [(v, s, b, (c, v, v * w // h)) for v in (h // 2, h, 2 * h) for s in specs]
    if axis == "paths":
        return [(v, MethodSpec(f"fcfd:num_paths={v}", "fcfd", {"num_paths": v}), b, (c, h, w))
                for v in PATHS]
    return [(v, MethodSpec(f"crd:num_negatives={v}", "crd", {"num_negatives": v}), b, (c, h, w))
            for v in BANKS]


def run_scaling(axes: Sequence[str], *, preset: str = "cifar", methods: str = "kd,fcfd",
                steps: int = 3, warmup: int = 1, device: torch.device | str = "cpu",
                amp: str = "none", channels_last: bool = False,
                progress: bool = True) -> list[ScalingPoint]:
    """Time every point of every axis once (``steps`` timed steps after ``warmup``)."""
    from kdlab.methods import METHODS

    if preset not in PRESETS or PRESETS[preset].task != "classification":
        raise UserError(f"--scaling needs a classification preset, not {preset!r}.")
    p = PRESETS[preset]
    device = torch.device(device)
    specs = parse_methods(methods)
    points: list[ScalingPoint] = []
    _prime(p.student, p.input_shape, p.num_classes, p.batch, device, amp)
    for axis in axes:
        for value, spec, batch, shape in axis_points(axis, p, specs):
            if spec.name not in METHODS:
                continue
            if progress:
                print(f"  {axis} = {value}: {spec.label} ...", flush=True)
            r = bench_method(spec, teacher=p.teacher, student=p.student, input_shape=shape,
                             num_classes=p.num_classes, batch=batch, steps=steps, warmup=warmup,
                             device=device, amp=amp, train_size=p.train_size,
                             channels_last=channels_last)
            method = spec.label if axis in ("batch", "image") else spec.name
            points.append(ScalingPoint(axis, value, method, r.ms_mean, r.ms_std,
                                       r.images_per_s, r.gflop))
    return points


def exponent(values: Sequence[float], ms: Sequence[float]) -> float:
    """Slope of the least-squares line through (log value, log ms)."""
    x = [math.log(v) for v in values]
    y = [math.log(t) for t in ms]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    den = sum((a - mx) ** 2 for a in x)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / den if den else math.nan


def _series(points: Sequence[ScalingPoint]) -> dict[tuple[str, str], list[ScalingPoint]]:
    out: dict[tuple[str, str], list[ScalingPoint]] = {}
    for pt in points:
        out.setdefault((pt.axis, pt.method), []).append(pt)
    return out


def format_markdown(points: Sequence[ScalingPoint], header: str = "") -> str:
    lines = [header, ""] if header else []
    for (axis, method), pts in _series(points).items():
        slope = exponent([p.value for p in pts], [p.ms_mean for p in pts])
        lines += [f"**{method}, {AXIS_LABEL[axis]}** (ms/iter grows as value^{slope:.2f})", "",
                  f"| {axis} | ms/iter | ± std | images/s | GFLOP/step | × first point |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for p in pts:
            gflop = f"{p.gflop:.3f}" if p.gflop is not None else "-"
            lines.append(f"| {p.value} | {p.ms_mean:.1f} | {p.ms_std:.1f} | "
                         f"{p.images_per_s:.1f} | {gflop} | {p.ms_mean / pts[0].ms_mean:.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_csv(points: Sequence[ScalingPoint], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["axis", "value", "method", "ms_mean", "ms_std", "images_per_s", "gflop"])
    for p in points:
        w.writerow([p.axis, p.value, p.method, f"{p.ms_mean:.3f}", f"{p.ms_std:.3f}",
                    f"{p.images_per_s:.2f}", "" if p.gflop is None else f"{p.gflop:.4f}"])
    atomic_write_text(path, buf.getvalue())


def plot(points: Sequence[ScalingPoint], path: Path, title: str = "") -> None:
    """One log-log panel per axis: ms/iter against the axis' value, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(dict.fromkeys(p.axis for p in points))
    fig, panels = plt.subplots(1, len(axes), figsize=(4 * len(axes), 3.4), squeeze=False)
    for ax, axis in zip(panels[0], axes, strict=True):
        for (a, method), pts in _series(points).items():
            if a != axis:
                continue
            vals, ms = [p.value for p in pts], [p.ms_mean for p in pts]
            ax.plot(vals, ms, marker="o", label=f"{method} (^{exponent(vals, ms):.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(AXIS_LABEL[axis])
        ax.set_ylabel("ms / step")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_scaling(points: Sequence[ScalingPoint], out_dir: str | Path, header: str = ""
                  ) -> list[Path]:
    """scaling.md, scaling.csv and scaling.png in ``out_dir`` (made if needed)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--scaling-out {str(out)!r} is a file; give a folder.")
    if not points:
        raise UserError("--scaling timed nothing: the methods of its axes are not registered.")
    out.mkdir(parents=True, exist_ok=True)
    md, table, png = out / "scaling.md", out / "scaling.csv", out / "scaling.png"
    atomic_write_text(md, format_markdown(points, header) + "\n")
    write_csv(points, table)
    plot(points, png, header.splitlines()[0] if header else "")
    return [md, table, png]
