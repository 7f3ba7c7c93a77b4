"""``kdlab export``: a run's exported networks as safetensors files.

A plain network (``kind: model`` in the metadata) loads into the ordinary model:
``build_model(model, num_classes=..., in_channels=..., input_size=...).net
.load_state_dict(safetensors.torch.load_file(path))``. A composite one (``kind: composite``,
e.g. SimKD's student + projector + reused teacher head) carries the method and the run's
config; ``kdlab.export.load_exported(path)`` returns the network for either kind.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdlab.cli.commands.common import WHICH, restore_run
from kdlab.errors import UserError

LOADING = (
    "Loading: `from kdlab.export import load_exported; net = load_exported(FILE)` gives the "
    "network (images -> logits, eval mode) for any file. A file whose metadata has "
    "kind=model also loads without kdlab's run machinery: build_model(model, num_classes=..., "
    "in_channels=..., input_size=...).net.load_state_dict(safetensors.torch.load_file(FILE)). "
    "A kind=composite file (SimKD, FCFD with simkd: true) holds the method and the run's "
    "config in its metadata; load_exported rebuilds it (no teacher checkpoint needed)."
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="write a run's networks as .safetensors (see kdlab.export.load_exported)",
        description="Rebuild the run's method from its config, load the checkpoint, and write "
        "each network the method exports (e.g. every DML peer, SimKD's deployed student) as "
        "a safetensors file with metadata. " + LOADING,
    )
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--which", choices=WHICH, default="best", help="checkpoint in a run folder")
    p.add_argument("--out", metavar="FILE.safetensors",
                   help="output file (default: NAME.safetensors beside the checkpoint); with "
                   "several networks the name is added: FILE-NAME.safetensors")
    p.set_defaults(run=run)


def output_paths(names: list[str], ckpt_path: Path, out: str | None) -> dict[str, Path]:
    if out is None:
        return {n: ckpt_path.parent / f"{n}.safetensors" for n in names}
    o = Path(out)
    if o.suffix != ".safetensors":
        raise UserError(f"--out {out!r} must end in .safetensors.")
    if o.is_dir():
        raise UserError(f"--out {out!r} is a folder; give a file name ending in .safetensors.")
    if len(names) == 1:
        return {names[0]: o}
    return {n: o.with_name(f"{o.stem}-{n}{o.suffix}") for n in names}


def run(args: argparse.Namespace) -> int:
    from kdlab.tools.export import export_metadata, write_exported

    r = restore_run(args.path, args.which, [], load_data=False)
    exported = r.distiller.exported()
    paths = output_paths(list(exported), r.ckpt_path, args.out)
    for name, module in exported.items():
        meta = export_metadata(module, name, r.cfg, r.info)
        write_exported(module, meta, paths[name])
        what = meta.get("model") or f"{meta['method']}({meta['student']}), composite"
        print(f"{name}: {what} -> {paths[name]}")
    return 0
