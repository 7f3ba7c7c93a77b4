"""One Markdown table from the CSVs of benchmarks/gpu/run_gpu_bench.sh: per method and pass,
images/s, ms/iter, GFLOP per step, GFLOP/s and the fraction of the large-matmul rate.

    python benchmarks/gpu/summarise.py OUT_FOLDER [--command "..."]   # writes OUT/gpu_bench.md
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

PASSES = (("gpu_nchw_eager.csv", "NCHW, eager"), ("gpu_nhwc_eager.csv", "channels-last, eager"),
          ("gpu_nhwc_compile.csv", "channels-last, compiled"))


def read(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The ``# key: value`` metadata lines and the rows of a kdlab bench CSV."""
    meta, body = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            key, _, value = line[2:].partition(": ")
            meta[key] = value
        else:
            body.append(line)
    return meta, list(csv.DictReader(body))


def summarise(folder: Path, command: str = "") -> str:
    runs = {label: read(folder / name) for name, label in PASSES if (folder / name).is_file()}
    if not runs:
        raise SystemExit(f"no bench CSV in {folder}")
    meta = next(iter(runs.values()))[0]
    lines = [
        "# GPU bench: every method, bf16 AMP, NCHW / channels-last / torch.compile", "",
        f"- pair: {meta.get('teacher')} -> {meta.get('student')}, input "
        f"{meta.get('input_shape')}, batch {meta.get('batch')}, amp {meta.get('amp')}, "
        f"{meta.get('steps')} timed steps after {meta.get('warmup')} warm-up",
        f"- hardware: {meta.get('hardware')}; torch {meta.get('torch')}; kdlab "
        f"{meta.get('kdlab')}; {meta.get('date')}",
        f"- large-matmul rate: {meta.get('matmul_gflops')} GFLOP/s ({meta.get('matmul')}); "
        "x mm = achieved GFLOP/s over it (the step's model-FLOP utilisation of what this "
        "device reaches)",
        f"- command: `{command or 'benchmarks/gpu/run_gpu_bench.sh'}`", "",
        "| method | pass | images/s | ms/iter | GFLOP/step | GFLOP/s | x mm | x kd | compile s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    methods = list(dict.fromkeys(r["method"] for _, rows in runs.values() for r in rows))
    for method in methods:
        for label, (_, rows) in runs.items():
            for r in rows:
                if r["method"] == method:
                    lines.append(f"| {method} | {label} | {r['images_per_s']} | {r['ms_mean']} | "
                                 f"{r.get('gflop', '')} | {r.get('gflops', '')} | "
                                 f"{r.get('mm_fraction', '')} | {r.get('ratio_to_kd', '')} | "
                                 f"{r.get('compile_s', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--command", default="")
    args = parser.parse_args()
    text = summarise(args.folder, args.command)
    (args.folder / "gpu_bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
