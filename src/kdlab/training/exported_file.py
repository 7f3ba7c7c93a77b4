"""The safetensors file of an exported network: its metadata and its atomic writer.

Written by ``kdlab export`` (:mod:`kdlab.tools.export`, which also reads the files back) and
by a finished run for its experiment trackers (:mod:`kdlab.training.trackers.artifacts`); it
lives here, below both, so that training never imports the tools built on it. The two kinds
of file (``model`` and ``composite``) are described in :mod:`kdlab.tools.export`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from kdlab.core.version import __version__
from kdlab.runtime.files import atomic_write

PLAIN = "model"
COMPOSITE = "composite"
SHAPE = ("num_classes", "in_channels", "input_size")


def export_metadata(module: nn.Module, name: str, cfg: Any, info: Any) -> dict[str, str]:
    """The safetensors metadata for network ``name`` of a run with config ``cfg`` (a
    :class:`~kdlab.core.config.RunConfig`) on data shaped like ``info`` (a DatasetInfo)."""
    spec = getattr(module, "kdlab_spec", None)
    if isinstance(spec, Mapping):
        return {
            "kind": PLAIN,
            "name": name,
            "model": str(spec["model"]),
            **{k: str(int(spec[k])) for k in SHAPE},
            "options": json.dumps(dict(spec.get("options") or {}), sort_keys=True),
            "kdlab_version": __version__,
        }
    return {
        "kind": COMPOSITE,
        "name": name,
        "method": cfg.method_name,
        "student": cfg.model.student,
        "teacher": cfg.model.teacher or "",
        **{k: str(int(getattr(info, k))) for k in SHAPE},
        "train_size": str(int(info.train_size)),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "kdlab_version": __version__,
    }


def write_exported(module: nn.Module, meta: Mapping[str, str], path: str | Path) -> None:
    """Write ``module``'s state_dict with ``meta`` as a safetensors file, atomically (tensors
    moved to the CPU and made contiguous; shared storage is split)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone()
               for k, v in module.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=dict(meta)))
