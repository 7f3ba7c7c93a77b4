"""What a finished run hands its trackers: the report files and the exported networks."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the run files that make up its report, beside the report's own pictures
REPORT_FILES = ("report.md", "curves.png", "config.yaml", "metrics.csv")


def report_files(out_dir: Path, figures: Sequence[str]) -> list[Path]:
    """The report files of ``out_dir`` that exist."""
    names = [*REPORT_FILES, *figures]
    return [out_dir / n for n in dict.fromkeys(names) if (out_dir / n).is_file()]


def export_best(out_dir: Path, raw: Any, cfg: Any, info: Any) -> list[Path]:
    """Write the networks the method exports, with ``best.pt``'s weights, as
    ``out_dir/NAME.safetensors``: the files ``kdlab export RUN`` writes (same metadata, loaded
    by :func:`kdlab.export.load_exported`). ``raw`` is the trained distiller (it gives the
    architectures; its own weights are left alone)."""
    from kdlab.training.checkpoint import load_checkpoint
    from kdlab.training.exported_file import export_metadata, write_exported

    best = out_dir / "best.pt"
    if not best.is_file():
        return []
    saved = load_checkpoint(best).get("exported", {})
    written = []
    for name, module in raw.exported().items():
        if name not in saved:
            continue
        network = copy.deepcopy(module).cpu()
        network.load_state_dict(saved[name])
        path = out_dir / f"{name}.safetensors"
        write_exported(network, export_metadata(network, name, cfg, info), path)
        written.append(path)
    return written
