"""What ``--resume`` may change, and the check that refuses the rest.

A resumed run continues the saved one: its result must be the result of the settings it was
started with. So the config given on resume (the recipe and ``--set``) is compared with the
run's own ``config.yaml`` (or, without it, the copy inside ``last.pt``), and only these may
differ (:data:`MAY_CHANGE`):

- ``schedule.epochs``, to train longer (or stop earlier), with the ``multistep`` and
  ``constant`` schedules, whose LR at an epoch does not depend on the total; a cosine or poly
  schedule is shaped by the total, so there it is refused;
- how the run is watched and where it runs: ``train.progress``, ``train.loggers``,
  ``train.mlflow_uri``, ``train.experiment``, ``train.device``, ``train.threads``,
  ``train.evaluate_teacher``,
  ``train.out_dir`` (a moved folder), ``data.eval_batch_size``, ``data.num_workers``,
  ``data.device_resident``, ``data.root`` and ``data.download`` (a moved data set);
- where the starting weights are read from when the file moved: ``model.teacher_checkpoint``
  and a path in ``model.teacher_pretrained`` (a path for a path; the teacher must be the same
  network), and ``model.student_pretrained`` (not read on resume: the checkpoint replaces it);
- ``data.batch_size`` only together with the number of processes, so that the global batch
  (processes x ``data.batch_size``) stays the same;
- ``train.channels_last`` written otherwise with the same layout on the resume's device (a
  run saved with ``false`` before ``auto`` became the default resumes with ``auto`` on a
  device where ``auto`` is off; on CPU and CUDA it needs ``--set train.channels_last=false``).

Anything else is refused with one sentence listing each difference; the saved
``config.yaml`` is rewritten only with allowed changes, and those are printed first.
A different number of torchrun processes is refused unless the global batch is kept; when it
is kept the run continues with a note that BatchNorm statistics and the ranks' random streams
differ, so the weights will not match an uninterrupted run bit for bit.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from kdlab.core.config import RunConfig, build_dataclass
from kdlab.errors import UserError

MAY_CHANGE = frozenset({
    "schedule.epochs", "train.progress", "train.loggers", "train.mlflow_uri", "train.experiment",
    "train.device", "train.threads", "train.out_dir",
    "data.eval_batch_size", "data.num_workers", "data.device_resident", "data.root",
    "data.download", "model.teacher_checkpoint", "model.teacher_pretrained",
    "model.student_pretrained", "data.batch_size", "train.evaluate_teacher",
})
#: schedules whose LR at an epoch does not depend on schedule.epochs
EPOCH_FREE_SCHEDULES = ("multistep", "constant")


@dataclasses.dataclass
class Saved:
    """What the run folder says about the run that is resumed."""

    config: RunConfig
    world_size: int  # processes of the run that wrote last.pt (1 when it does not say)
    has_checkpoint: bool


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _normalised(cfg: RunConfig) -> dict[str, Any]:
    """``cfg`` as flat dotted keys, the method's options completed with its defaults."""
    from kdlab.methods import METHODS

    tree = cfg.to_dict()
    try:
        method_cfg = build_dataclass(METHODS.get(cfg.method_name).Config, cfg.method_options,
                                     where=f"method.{cfg.method_name}")
        tree["method"] = {"name": cfg.method_name, **dataclasses.asdict(method_cfg)}
    except UserError:
        pass  # compared as written
    tree["train"]["out_dir"] = str(Path(cfg.train.out_dir).resolve())  # runs/x == ./runs/x/
    return _flatten(tree)


def _current_world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def read_saved(out_dir: Path) -> Saved | None:
    """The saved run in ``out_dir`` (None when it holds neither config.yaml nor last.pt)."""
    from kdlab.core.recipe_yaml import load_yaml, read_text
    from kdlab.training.checkpoint import load_checkpoint

    last, config = out_dir / "last.pt", out_dir / "config.yaml"
    ckpt = load_checkpoint(last, mmap=True) if last.is_file() else None
    if config.is_file():
        tree = load_yaml(read_text(config, "The run's config"))
    elif ckpt is not None and isinstance(ckpt.get("config"), dict):
        tree = ckpt["config"]
    else:
        return None
    saved = build_dataclass(RunConfig, tree, where=f"{config}")
    world = int(ckpt.get("world_size", 1)) if ckpt is not None else 1
    return Saved(config=saved, world_size=world, has_checkpoint=ckpt is not None)


def _allowed(key: str, old: Any, new: Any, cfg: RunConfig) -> bool:
    if key == "train.channels_last":  # e.g. a run saved with false, resumed with auto on a GPU
        from kdlab.nn.layout import use_channels_last
        from kdlab.training.build import resolve_device

        device = resolve_device(cfg.train.device)
        return use_channels_last(old, device) == use_channels_last(new, device)
    if key not in MAY_CHANGE:
        return False
    if key == "schedule.epochs":
        return cfg.schedule.name in EPOCH_FREE_SCHEDULES
    if key == "model.teacher_pretrained":  # a moved file, not other weights
        return isinstance(old, str) and isinstance(new, str)
    return key != "data.batch_size"  # checked with the world size


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_resume(cfg: RunConfig, out_dir: Path) -> list[str]:
    """Refuse a resume of ``out_dir`` with ``cfg`` that changes the run's results (UserError
    listing every difference); return notes on the allowed changes to print."""
    saved = read_saved(out_dir)
    if saved is None:
        return []
    before, after = _normalised(saved.config), _normalised(cfg)
    changes = {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)}
    refused = [k for k, (old, new) in changes.items() if not _allowed(k, old, new, cfg)]
    notes = []
    world = _current_world_size()
    if saved.has_checkpoint and world != saved.world_size:
        old_bs, new_bs = saved.config.data.batch_size, cfg.data.batch_size
        total = saved.world_size * old_bs
        if world * new_bs != total:
            keep = (f", or set data.batch_size={total // world} to keep the global batch"
                    if total % world == 0 else "")
            raise UserError(
                f"{str(out_dir)!r} was trained with {saved.world_size} process(es) x "
                f"data.batch_size {old_bs} (global batch {total}); resuming with {world} x "
                f"{new_bs} would change the results: resume with {saved.world_size} "
                f"process(es){keep}.")
        notes.append(f"{saved.world_size} -> {world} process(es) with the same global batch "
                     f"{world * new_bs}; BatchNorm statistics and random streams differ, so "
                     "the weights will not match an uninterrupted run exactly")
        refused = [k for k in refused if k != "data.batch_size"]
    if refused:
        listed = "; ".join(f"{k} {_show(changes[k][0])} -> {_show(changes[k][1])}"
                           for k in refused)
        raise UserError(
            f"--resume would change settings of the run in {str(out_dir)!r} ({listed}); "
            f"resume with its own config ({str(out_dir / 'config.yaml')!r}) or start a new run "
            "in another out_dir (only schedule.epochs, train.progress, train.device, data "
            "locations and eval batch size, and moved weight files may change).")
    return [f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in changes.items()] + notes
