"""Helpers shared by subcommands: finding a run's checkpoint and its resolved config."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kdlab.config import RunConfig, apply_overrides, build_dataclass
from kdlab.errors import UserError

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
    """Load a run checkpoint (weights only) and check it holds exported networks."""
    from kdlab.engine.checkpoint import load_checkpoint

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
    if not isinstance(ckpt, dict) or not ckpt.get("exported") or not ckpt.get("models"):
        raise UserError(
            f"{str(path)!r} is not a kdlab run checkpoint (no exported networks); give a run "
            "folder or its best.pt / last.pt."
        )
    return ckpt


def run_config(ckpt_path: Path, ckpt: dict[str, Any], overrides: Sequence[str]) -> RunConfig:
    """The run's resolved config: ``config.yaml`` beside the checkpoint, else the copy inside
    the checkpoint; then ``--set`` overrides."""
    beside = ckpt_path.parent / "config.yaml"
    if beside.is_file():
        try:
            tree = yaml.safe_load(beside.read_text()) or {}
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
    return build_dataclass(RunConfig, tree, where="config")
