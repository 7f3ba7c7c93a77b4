"""``kdlab export``: a run's exported networks as safetensors, ONNX or ``torch.export`` files.

``--format safetensors`` (the default): the weights. A plain network (``kind: model`` in the
metadata) loads into the ordinary model: ``build_model(model, num_classes=...,
in_channels=..., input_size=...).net.load_state_dict(safetensors.torch.load_file(path))``. A
composite one (``kind: composite``, e.g. SimKD's student + projector + reused teacher head)
carries the method and the run's config; ``kdlab.export.load_exported(path)`` returns the
network for either kind.

``--format onnx`` / ``torch-export``: the deployable graph of the run's task
(:mod:`kdlab.tasks.deploy`), checked on the run's own validation images against the PyTorch
network before it is written (:mod:`kdlab.tools.deploy.write`); the check's largest difference is
printed, and a failure leaves no file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdlab.cli.commands.common import WHICH, restore_run
from kdlab.errors import UserError

FORMATS = ("safetensors", "onnx", "torch-export")
SUFFIX = {"safetensors": ".safetensors", "onnx": ".onnx", "torch-export": ".pt2"}

LOADING = (
    "Loading: `from kdlab.export import load_exported; net = load_exported(FILE)` gives the "
    "network (images -> logits, eval mode) for any file. A file whose metadata has "
    "kind=model also loads without kdlab's run machinery: build_model(model, num_classes=..., "
    "in_channels=..., input_size=...).net.load_state_dict(safetensors.torch.load_file(FILE)). "
    "A kind=composite file (SimKD, FCFD with simkd: true) holds the method and the run's "
    "config in its metadata; load_exported rebuilds it (no teacher checkpoint needed). "
    "An .onnx file runs in onnxruntime (input 'images', normalised like the training data; "
    "the metadata says how); a .pt2 file loads with torch.export.load(FILE).module()."
)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="write a run's networks as .safetensors, .onnx or .pt2 (verified)",
        description="Rebuild the run's method from its config, load the checkpoint, and write "
        "each network the method exports (e.g. every DML peer, SimKD's deployed student). "
        "ONNX and torch.export files are run on the run's validation images and compared "
        "with the PyTorch network before they are written. " + LOADING,
    )
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--which", choices=WHICH, default="best", help="checkpoint in a run folder")
    p.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="safetensors (weights, the default), onnx (onnxruntime; needs "
                   "kdlab[deploy]) or torch-export (.pt2)")
    p.add_argument("--out", metavar="FILE",
                   help="output file, ending in the format's suffix (default: NAME.SUFFIX "
                   "beside the checkpoint); with several networks the name is added: "
                   "FILE-NAME.SUFFIX")
    p.add_argument("--images", type=int, default=8, metavar="N",
                   help="validation images the onnx / torch-export check runs (default 8)")
    p.add_argument("--tolerance", type=float, default=None, metavar="T",
                   help="largest accepted difference from PyTorch, relative to each "
                   "output's scale max(1, max |output|) (default 1e-4)")
    p.set_defaults(run=run)


def output_paths(names: list[str], ckpt_path: Path, out: str | None,
                 suffix: str = ".safetensors") -> dict[str, Path]:
    if out is None:
        return {n: ckpt_path.parent / f"{n}{suffix}" for n in names}
    o = Path(out)
    if o.suffix != suffix:
        raise UserError(f"--out {out!r} must end in {suffix}.")
    if o.is_dir():
        raise UserError(f"--out {out!r} is a folder; give a file name ending in {suffix}.")
    if len(names) == 1:
        return {names[0]: o}
    return {n: o.with_name(f"{o.stem}-{n}{o.suffix}") for n in names}


def run(args: argparse.Namespace) -> int:
    if args.format != "safetensors":
        return run_deployable(args)
    from kdlab.training.exported_file import export_metadata, write_exported

    r = restore_run(args.path, args.which, [], load_data=False, thread_policy=True)
    exported = r.distiller.exported()
    paths = output_paths(list(exported), r.ckpt_path, args.out)
    for name, module in exported.items():
        meta = export_metadata(module, name, r.cfg, r.info)
        write_exported(module, meta, paths[name])
        what = meta.get("model") or f"{meta['method']}({meta['student']}), composite"
        print(f"{name}: {what} -> {paths[name]}")
    return 0


def run_deployable(args: argparse.Namespace) -> int:
    """``--format onnx | torch-export``: every exported network, verified, then written."""
    from kdlab.cli.commands.evaluate import network_label
    from kdlab.tools.deploy.onnx_format import require_onnx
    from kdlab.tools.deploy.verify import TOLERANCE, validation_images
    from kdlab.tools.deploy.write import deploy_metadata, write_verified

    if args.images < 1:
        raise UserError(f"--images {args.images} must be at least 1.")
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    if not tolerance >= 0:
        raise UserError(f"--tolerance {args.tolerance} must be a number >= 0.")
    if args.format == "onnx":
        require_onnx()  # before the run and its data are loaded
    r = restore_run(args.path, args.which, [], device="cpu", thread_policy=True)
    exported = r.distiller.exported()
    paths = output_paths(list(exported), r.ckpt_path, args.out, SUFFIX[args.format])
    images = validation_images(r.val, args.images)
    task = r.distiller.task
    for name, module in exported.items():
        model = network_label(module, r.cfg)
        spec = task.deploy(module.eval(), tuple(images[0].shape))
        meta = deploy_metadata(spec, args.format, name=name, model=model, task=task.name,
                               info=r.info)
        check = write_verified(args.format, spec, images, paths[name], meta,
                               label=f"{name} ({model})", tolerance=tolerance)
        print(f"{name}: {model} -> {paths[name]}")
        print(f"  graph: {spec.signature}")
        print(f"  checked against PyTorch: {check.describe()} (tolerance {tolerance:g} x "
              "scale)")
    return 0
