"""``torch.export`` files (``.pt2``): the captured program with kdlab's metadata.

``torch.export.save`` writes the program (graph + weights) with the metadata as the extra
file :data:`METADATA`; :func:`load_pt2` gives back a callable module (``torch.export.load(
path).module()``) and the metadata. The program runs in any PyTorch of the same major
version, without kdlab or the network's Python code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.tasks.deploy import DeploySpec
from kdlab.tools.deploy.capture import export_program

#: the extra file of a .pt2 that holds kdlab's metadata (JSON)
METADATA = "kdlab.json"


def write_pt2(spec: DeploySpec, images: Tensor, path: Path, metadata: Mapping[str, str],
              label: str) -> None:
    """Capture the spec's graph on an example from ``images`` and save it at ``path``."""
    program = export_program(spec, images, label)
    with open(path, "wb") as f:  # a file object: torch wants a name ending in .pt2 otherwise
        torch.export.save(program, f, extra_files={METADATA: json.dumps(dict(metadata))})


def load_pt2(path: str | Path) -> tuple[nn.Module, dict[str, str]]:
    """(the program as a callable module, kdlab's metadata) of a ``.pt2`` file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{str(p)!r} does not exist; write it with "
                        "`kdlab export RUN --format torch-export`.")
    extra = {METADATA: ""}
    try:
        with open(p, "rb") as f:
            program = torch.export.load(f, extra_files=extra)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise UserError(f"{str(p)!r} is not a readable torch.export file ({str(e)[:200]}); "
                        "export it again with `kdlab export --format torch-export`.") from None
    try:
        metadata = json.loads(extra[METADATA]) if extra[METADATA] else {}
    except json.JSONDecodeError:
        metadata = {}
    return program.module(), metadata
