"""``kdlab export``: a run's networks as safetensors files that load into the plain model.

``build_model(name, ...).net.load_state_dict(safetensors.torch.load_file(path))``; the file's
metadata names the model, its class count, input channels and size, and the kdlab version.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from kdlab import __version__
from kdlab.commands.common import WHICH, find_checkpoint, load_run_checkpoint
from kdlab.commands.evaluate import build_network
from kdlab.engine.io import atomic_write
from kdlab.errors import UserError


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="write a run's networks as .safetensors (loadable into the plain model)",
        description="Write each exported network's state_dict as safetensors, with the model "
        "name, class count, input channels and size in the metadata.",
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


def metadata(spec: dict[str, Any], name: str) -> dict[str, str]:
    return {
        "name": name,
        "model": str(spec["model"]),
        "num_classes": str(int(spec["num_classes"])),
        "in_channels": str(int(spec["in_channels"])),
        "input_size": str(int(spec["input_size"])),
        "kdlab_version": __version__,
    }


def write_safetensors(state: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> None:
    """Write a state_dict atomically (tensors made contiguous, shared storage split)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def run(args: argparse.Namespace) -> int:
    ckpt_path = find_checkpoint(args.path, args.which)
    ckpt = load_run_checkpoint(ckpt_path)
    names = list(ckpt["exported"])
    paths = output_paths(names, ckpt_path, args.out)
    for name in names:
        spec = ckpt["models"].get(name)
        if spec is None:
            raise UserError(f"The checkpoint has weights for {name!r} but no model entry; "
                            "it is not a kdlab checkpoint of this version.")
        # Build the plain model and load the weights first: an export that would not load
        # is refused rather than written.
        net = build_network(spec, ckpt["exported"][name], name).net
        write_safetensors(net.state_dict(), metadata(spec, name), paths[name])
        print(f"{name}: {spec['model']} -> {paths[name]}")
    return 0
