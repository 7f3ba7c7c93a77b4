"""``kdlab cache-teacher``: the teacher's outputs on K augmented views per training image,
stored once for logit-only methods to train from (``data.teacher_cache``)."""

from __future__ import annotations

import argparse
from typing import Any

from kdlab.cli.commands.common import add_set_option, apply_cpu_threads


def count(text: str) -> int:
    """A whole number as a user may type it: ``8``, ``1_000``, ``1e6``."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cache-teacher", help="store the teacher's outputs on K augmented views per image",
        description="Run the recipe's teacher once over K augmented views of every training "
        "image and store the views' augmentation parameters with the teacher's outputs in one "
        "memory-mapped file (default: beside the teacher's checkpoint). Then train a logit-only "
        "method (kd, dkd) with --set data.teacher_cache=PATH: the teacher no longer runs. An "
        "interrupted build continues when the command is run again.",
    )
    p.add_argument("recipe", metavar="RECIPE", help="YAML recipe naming the data and the "
                   "teacher (- reads it from standard input)")
    add_set_option(p)
    p.add_argument("--views", type=count, default=8, metavar="K",
                   help="augmented views per training image (default 8)")
    p.add_argument("--out", metavar="PATH", help="the cache file (default: beside the "
                   "teacher's checkpoint, named after the data, K and the format)")
    p.add_argument("--format", dest="output", choices=("logits", "topk"), default="logits",
                   help="logits: all logits in fp16 (exact); topk: the top-k softmax "
                   "probabilities and their classes (smaller, FKD's compression)")
    p.add_argument("--topk", type=int, default=5, metavar="k",
                   help="classes kept per view with --format topk (default 5)")
    p.add_argument("--batch", type=int, default=None,
                   help="views per teacher forward (default: data.eval_batch_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the views' augmentation")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | ... (default: "
                   "train.device)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdlab.core.config import load_config
    from kdlab.tools.teacher_cache import build_teacher_cache, describe
    from kdlab.training.build import resolve_device

    cfg = load_config(args.recipe, list(args.overrides))
    apply_cpu_threads(cfg.train.threads, resolve_device(args.device or cfg.train.device))
    args.memory_hint = ("lower --views (each training image is stored that many times) or "
                        "--batch (views per teacher forward)")
    path, meta = build_teacher_cache(
        cfg, views=args.views, out=args.out, output=args.output, topk=args.topk,
        batch=args.batch, seed=args.seed, device=args.device, progress=cfg.train.progress)
    print(describe(path, meta))
    print(f"train from it with: --set data.teacher_cache={path}")
    return 0
