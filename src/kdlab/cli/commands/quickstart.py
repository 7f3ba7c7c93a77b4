"""``kdlab quickstart``: teacher, student alone, student + KD and student + FCFD on
Fashion-MNIST, compared."""

from __future__ import annotations

import argparse
from typing import Any

from kdlab.tools.quickstart import QuickstartSettings

D = QuickstartSettings()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "quickstart", help="train a teacher, the student alone, with KD and with FCFD; print "
        "a table and save a bar plot",
        description="The README's main job: short runs on Fashion-MNIST (minutes on a CPU).",
    )
    p.add_argument("--out", default=D.out, metavar="DIR", help=f"runs folder (default {D.out})")
    p.add_argument("--epochs", type=int, default=D.epochs,
                   help=f"epochs of each student run ({D.epochs})")
    p.add_argument("--teacher-epochs", type=int, default=D.teacher_epochs,
                   help=f"epochs of the teacher run ({D.teacher_epochs})")
    p.add_argument("--seed", type=int, default=D.seed, help=f"seed of every run ({D.seed})")
    p.add_argument("--train-subset", type=int, default=D.train_subset, metavar="N",
                   help=f"use the first N training images ({D.train_subset}); 0 = all")
    p.add_argument("--teacher", default=D.teacher, help=f"teacher model ({D.teacher})")
    p.add_argument("--student", default=D.student, help=f"student model ({D.student})")
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--lr", type=float, default=D.lr)
    p.add_argument("--data-root", default=None, help="Fashion-MNIST folder (default: found)")
    p.add_argument("--device", default=D.device)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dataset", default=D.dataset, help=argparse.SUPPRESS)
    p.add_argument("--fresh", action="store_true", help="retrain even if finished runs exist")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from kdlab.tools.quickstart import quickstart

    quickstart(QuickstartSettings(
        out=args.out, teacher=args.teacher, student=args.student, epochs=args.epochs,
        teacher_epochs=args.teacher_epochs, seed=args.seed,
        train_subset=args.train_subset or None, batch_size=args.batch_size, lr=args.lr,
        dataset=args.dataset, data_root=args.data_root, device=args.device,
        max_steps_per_epoch=args.max_steps_per_epoch, fresh=args.fresh,
    ))
    return 0
