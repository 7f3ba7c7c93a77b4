"""``kdlab eval``: top-1 / top-5 of a run's saved networks on the validation split."""

from __future__ import annotations

import argparse
from typing import Any

from kdlab.commands.common import (
    WHICH,
    add_set_option,
    find_checkpoint,
    load_run_checkpoint,
    run_config,
)
from kdlab.errors import UserError
from kdlab.models.staged import Staged


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a run's saved networks on the validation split",
        description="Evaluate every network a run saved (reads config.yaml beside the "
        "checkpoint for the data).",
    )
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--which", choices=WHICH, default="best", help="checkpoint in a run folder")
    add_set_option(p)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | ... (default: the run's)")
    p.set_defaults(run=run)


def build_network(spec: dict[str, Any], state: dict[str, Any], name: str) -> Staged:
    """The plain model described by a checkpoint's ``models[name]`` with its weights loaded."""
    from kdlab.models import build_model

    try:
        staged = build_model(
            spec["model"], num_classes=int(spec["num_classes"]),
            in_channels=int(spec["in_channels"]), input_size=int(spec["input_size"]),
        )
    except KeyError as e:
        raise UserError(f"The checkpoint's entry for {name!r} lacks {e}; it is not a kdlab "
                        "checkpoint of this version.") from None
    try:
        staged.net.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"The saved weights of {name!r} do not fit model {spec['model']!r} "
                        f"({first}); the checkpoint is corrupt or from another version.") from None
    return staged


def run(args: argparse.Namespace) -> int:
    ckpt_path = find_checkpoint(args.path, args.which)
    ckpt = load_run_checkpoint(ckpt_path)
    cfg = run_config(ckpt_path, ckpt, args.overrides)
    from kdlab.data import build_loaders
    from kdlab.engine.build import resolve_device
    from kdlab.engine.evaluate import evaluate

    device = resolve_device(args.device or cfg.train.device)
    loaders = build_loaders(cfg.data, device=device)
    val = loaders.val
    print(f"{ckpt_path}  ({cfg.data.name}, val split)")
    print(f"{'network':<12} {'model':<14} {'top-1':>7} {'top-5':>7} {'images':>8}")
    for name, state in ckpt["exported"].items():
        spec = ckpt["models"].get(name)
        if spec is None:
            raise UserError(f"The checkpoint has weights for {name!r} but no model entry; "
                            "it is not a kdlab checkpoint of this version.")
        net = build_network(spec, state, name).net.to(device)
        m = evaluate(net, val, device=device, amp=cfg.train.amp)
        print(f"{name:<12} {spec['model']:<14} {m['top1']:>7.2f} {m['top5']:>7.2f} "
              f"{m['images']:>8d}")
    return 0
