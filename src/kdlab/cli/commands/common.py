"""Helpers shared by subcommands: finding a run's checkpoint and its resolved config."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdlab.core.config import RunConfig, apply_overrides, build_dataclass
from kdlab.core.recipe_yaml import load_yaml, read_text
from kdlab.errors import UserError
from kdlab.runtime.threads import ThreadChoice

WHICH = ("best", "last")


def add_set_option(parser: Any) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=0.05 (repeatable)",
    )


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run folder -> its ``best.pt`` / ``last.pt``; a file is returned as it is."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{str(p)!r} does not exist; give a run folder or its best.pt / last.pt.")
    if p.is_dir():
        ckpt = p / f"{which}.pt"
        if not ckpt.is_file():
            found = sorted(f.name for f in p.glob("*.pt"))
            hint = f"it holds {', '.join(found)}" if found else "it holds no checkpoint"
            raise UserError(
                f"Run folder {str(p)!r} has no {which}.pt ({hint}); pick another --which "
                "or check that the run finished an epoch."
            )
        return ckpt
    return p


def load_run_checkpoint(path: Path) -> dict[str, Any]:
    """Load a run checkpoint (weights only) and check it holds the run's distiller weights."""
    from kdlab.training.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except UserError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError,
            pickle.UnpicklingError) as e:
        raise UserError(
            f"Checkpoint {str(path)!r} cannot be read ({type(e).__name__}); it is corrupt or "
            "not a kdlab checkpoint: use the run's other checkpoint or train again."
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("distiller"), dict):
        raise UserError(
            f"{str(path)!r} is not a kdlab run checkpoint (no distiller weights); give a run "
            "folder or its best.pt / last.pt."
        )
    return ckpt


def run_config(ckpt_path: Path, ckpt: dict[str, Any], overrides: Sequence[str]) -> RunConfig:
    """The run's resolved config: ``config.yaml`` beside the checkpoint, else the copy inside
    the checkpoint; then ``--set`` overrides."""
    beside = ckpt_path.parent / "config.yaml"
    if beside.is_file():
        try:
            tree = load_yaml(read_text(beside, "The run's config")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{str(beside)!r} is not valid YAML ({e}); fix or delete it.") from None
    elif isinstance(ckpt.get("config"), dict):
        tree = ckpt["config"]
    else:
        raise UserError(
            f"No config.yaml beside {str(ckpt_path)!r} and none inside it; copy the run's "
            "config.yaml next to the checkpoint."
        )
    tree = apply_overrides(copy.deepcopy(dict(tree)), overrides)
    cfg = build_dataclass(RunConfig, tree, where="config")
    from kdlab.training.prebuilt import refuse_memory

    refuse_memory(cfg, "kdlab eval / export")
    from kdlab.core.plugins import load_plugins

    load_plugins(cfg.plugins, source=f"the plugins of the run's config beside {str(ckpt_path)!r}")
    return cfg


# --------------------------------------------------------------------- CPU threads
def apply_cpu_threads(requested: int | str, device: Any) -> ThreadChoice:
    """kdlab's thread policy for a command without a training loop (``eval``, ``export``,
    ``analyze``, ``cache-teacher``): the count ``train.threads`` asks for, after one look at
    the cores when the command works on the CPU (a busy neighbour otherwise meets spinning
    threads, docs/threads.md), printed as the line a training run's header has."""
    import torch

    from kdlab.runtime.threads import apply_thread_policy, parse_threads

    choice = apply_thread_policy(parse_threads(requested),
                                 look=torch.device(device).type == "cpu")
    print(choice.describe(), flush=True)
    return choice


# --------------------------------------------------------------------- a finished run
@dataclass
class Restored:
    """A finished run rebuilt from its checkpoint (see :func:`restore_run`)."""

    ckpt_path: Path
    cfg: RunConfig
    distiller: Any  # kdlab.methods.Distiller, in eval mode, the run's weights loaded
    info: Any  # kdlab.data.DatasetInfo (the shape the networks were built for)
    val: Any  # the validation loader, or None when the data was not loaded
    device: Any  # torch.device the distiller is on
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # metrics rows


def restore_run(path: str | Path, which: str, overrides: Sequence[str], *,
                device: str | None = None, load_data: bool = True,
                thread_policy: bool = False) -> Restored:
    """Rebuild a run's distiller from its config and load the checkpoint's weights.

    The distiller (every method, composite networks included) is built from the run's
    config with the teacher's architecture only (the teacher checkpoint is not needed),
    then the checkpoint's ``distiller`` state_dict is loaded strictly. With
    ``load_data=False`` the data shape comes from the dataset's registered info; the data is
    loaded only if those sizes do not fit the checkpoint (e.g. an ImageNet folder's classes).
    ``device``: auto | cpu | cuda | ... (default: the run's ``train.device``; the CPU when
    ``load_data`` is false). ``thread_policy``: apply the run's ``train.threads`` before the
    data and networks are built (:func:`apply_cpu_threads`), as a command does once.
    """
    import torch

    from kdlab.data import build_loaders
    from kdlab.data.loaders import describe, subset_size
    from kdlab.training.build import resolve_device, restore_distiller

    ckpt_path = find_checkpoint(path, which)
    ckpt = load_run_checkpoint(ckpt_path)
    cfg = run_config(ckpt_path, ckpt, overrides)
    cfg.data.teacher_cache = None  # it served training only; the cache may be gone since
    if device is None:
        device = "cpu" if not load_data else cfg.train.device
    dev = resolve_device(device) if device != "cpu" else torch.device("cpu")
    if thread_policy:
        apply_cpu_threads(cfg.train.threads, dev)
    if not load_data:
        info = describe(cfg.data.name)
        info = dataclasses.replace(info, train_size=subset_size(info.train_size,
                                                                cfg.data.train_subset))
        try:
            distiller = restore_distiller(cfg, info, ckpt["distiller"], dev)
            return Restored(ckpt_path, cfg, distiller, info, None, dev,
                            list(ckpt.get("history", [])))
        except UserError as e:
            first_error = e
        try:
            loaders = build_loaders(cfg.data, dev, seed=cfg.train.seed)
        except UserError:
            raise first_error from None
    else:
        loaders = build_loaders(cfg.data, dev, seed=cfg.train.seed)
    distiller = restore_distiller(cfg, loaders.info, ckpt["distiller"], dev)
    return Restored(ckpt_path, cfg, distiller, loaders.info, loaders.val, dev,
                    list(ckpt.get("history", [])))
