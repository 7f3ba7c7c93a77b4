"""``kdlab eval``: the task's metrics (top-1 / top-5, mIoU, mAP) of a run's evaluated networks
on the validation split."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from kdlab.cli.commands.common import WHICH, add_set_option, restore_run
from kdlab.core.config import RunConfig

if TYPE_CHECKING:
    from torch import nn


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a run's saved networks on the validation split",
        description="Rebuild the run's method from config.yaml beside the checkpoint (or the "
        "copy inside it), load the checkpoint's weights, and evaluate every network the "
        "method reports (e.g. each DML peer, SimKD's student with projector and reused "
        "teacher head). The teacher's checkpoint is not needed.",
    )
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--which", choices=WHICH, default="best", help="checkpoint in a run folder")
    add_set_option(p)
    p.add_argument("--device", default=None, help="auto | cpu | cuda | ... (default: the run's)")
    p.set_defaults(run=run)


def network_label(net: nn.Module, cfg: RunConfig) -> str:
    """The registered model name of a plain network; ``method(student)`` for a composite."""
    spec = getattr(net, "kdlab_spec", None)
    if isinstance(spec, dict) and "model" in spec:
        return str(spec["model"])
    return f"{cfg.method_name}({cfg.model.student})"


def run(args: argparse.Namespace) -> int:
    from kdlab.training.report import COMPANION, LABELS

    r = restore_run(args.path, args.which, args.overrides, device=args.device,
                    thread_policy=True)
    task = r.distiller.task
    first, second = task.primary, COMPANION.get(task.primary, task.primary)
    print(f"{r.ckpt_path}  ({r.cfg.data.name}, val split)")
    print(f"{'network':<12} {'model':<14} {LABELS.get(first, first):>10} "
          f"{LABELS.get(second, second):>10} {'samples':>10}")
    for name, net in r.distiller.evaluated().items():
        m = task.evaluate(net, r.val, device=r.device, amp=r.cfg.train.amp)
        print(f"{name:<12} {network_label(net, r.cfg):<14} {m[first]:>10.2f} "
              f"{m[second]:>10.2f} {int(m.get('images', m.get('pixels', 0))):>10d}")
    return 0
