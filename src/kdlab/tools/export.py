"""Exported networks: safetensors files written by ``kdlab export`` and read back.

Two kinds of file, told apart by the ``kind`` metadata entry:

* ``model``: a plain registered network (e.g. a KD or DML student). The metadata names the
  ``model``, ``num_classes``, ``in_channels`` and ``input_size``; the tensors are the
  state_dict of ``build_model(...).net``, so the file loads into the ordinary model without
  kdlab's help beyond that call.
* ``composite``: a network a method assembles, e.g. SimKD's deployed student (backbone,
  projector and the reused teacher classifier) or FCFD with ``simkd: true``. The metadata
  names the ``method`` and holds the run's resolved ``config`` (JSON) and the data shape;
  :func:`load_exported` rebuilds the method's architecture from them (the teacher's
  checkpoint is not needed) and loads the tensors into the network it exports.

``load_exported(path)`` returns the ``nn.Module`` (images -> logits, eval mode) for either kind.
The metadata and the writer are :mod:`kdlab.training.exported_file` (a finished run writes
these files for its experiment trackers too).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from kdlab.errors import UserError
from kdlab.training.exported_file import COMPOSITE, PLAIN, SHAPE


def read_exported(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of an exported file; a missing or unreadable file is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"Exported file {str(p)!r} does not exist; write it with "
                        "`kdlab export RUN_DIR`.")
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        state = load_file(str(p), device="cpu")
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{str(p)!r} is not a readable .safetensors file ({e}); export it "
                        "again with `kdlab export`.") from None
    return state, meta


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) or lines[0]
        raise UserError(f"The tensors in {str(path)!r} do not fit the network its metadata "
                        f"describes ({detail[:300]}); export it again with this kdlab.") from None


def _composite(meta: dict[str, str], path: Path) -> nn.Module:
    from kdlab.core.config import RunConfig, build_dataclass
    from kdlab.training.build import build_distiller_from_config

    try:
        tree = json.loads(meta["config"])
        info = SimpleNamespace(**{k: int(meta[k]) for k in (*SHAPE, "train_size")})
        name = meta["name"]
    except (KeyError, ValueError) as e:
        raise UserError(f"{str(path)!r} lacks valid metadata ({e}); export it again with "
                        "`kdlab export`.") from None
    cfg = build_dataclass(RunConfig, tree, where=f"{path.name} config")
    # Rebuilding initialises layers from the global RNG: keep the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        distiller = build_distiller_from_config(cfg, info, "cpu", architecture_only=True)
    exported = distiller.exported()
    if name not in exported:
        raise UserError(f"Method {cfg.method_name!r} exports {', '.join(exported)}, not "
                        f"{name!r}; export {str(path)!r} again with this kdlab.")
    return exported[name]


def load_exported(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The network in a ``kdlab export`` file, weights loaded, in eval mode, on ``device``.

    A plain file gives ``build_model(model, ...).net``; a composite one the module the
    run's method exports (e.g. :class:`~kdlab.methods.shared.simkd_projector.SimKDStudent`).
    """
    p = Path(path)
    state, meta = read_exported(p)
    kind = meta.get("kind", PLAIN if "model" in meta else "")
    if kind == PLAIN:
        from kdlab.models import build_model

        try:
            shape = {k: int(meta[k]) for k in SHAPE}
            model = meta["model"]
        except (KeyError, ValueError) as e:
            raise UserError(f"{str(p)!r} lacks valid model metadata ({e}); export it again "
                            "with `kdlab export`.") from None
        with torch.random.fork_rng(devices=[]):
            options = json.loads(meta.get("options", "{}"))  # builder options, e.g. aux
            module: nn.Module = build_model(model, **shape, options=options).net
    elif kind == COMPOSITE:
        module = _composite(meta, p)
    else:
        raise UserError(f"{str(p)!r} was not written by `kdlab export` (metadata kind "
                        f"{kind!r}); export the run with `kdlab export RUN_DIR`.")
    _load_strict(module, state, p)
    return module.to(device).eval()
