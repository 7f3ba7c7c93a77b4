"""A deployable file, verified before it is in place.

:func:`write_verified` captures the task's graph (:mod:`kdlab.tasks.deploy`), writes it as
ONNX or ``.pt2`` to a temporary file beside the target, runs that file (onnxruntime, or
``torch.export.load``) on real validation images against the PyTorch network
(:mod:`kdlab.tools.deploy.verify`) and only then renames it into place: a failed capture, a
failed translation or a difference above the tolerance leaves no file behind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from kdlab.core.version import __version__
from kdlab.runtime.files import atomic_path
from kdlab.tasks.deploy import DeploySpec
from kdlab.tools.deploy.onnx_format import OPSET, OnnxRunner, write_onnx
from kdlab.tools.deploy.pt2_format import load_pt2, write_pt2
from kdlab.tools.deploy.verify import Check, check_inputs, verify

#: the deployable formats and their file suffixes
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}


def deploy_metadata(spec: DeploySpec, fmt: str, *, name: str, model: str, task: str,
                    info: Any) -> dict[str, str]:
    """What a deployable file records about its network: names, task, data shape and the
    normalisation its input expects (per-channel mean and std on the 0..1 pixel scale)."""
    meta = {
        "kdlab_version": __version__, "format": fmt, "name": name, "model": model,
        "task": task, "signature": spec.signature, "outputs": ",".join(spec.outputs),
        "num_classes": str(int(info.num_classes)), "in_channels": str(int(info.in_channels)),
        "input_size": str(int(info.input_size)),
        "mean": json.dumps([float(m) for m in getattr(info, "mean", ())]),
        "std": json.dumps([float(s) for s in getattr(info, "std", ())]),
    }
    if fmt == "onnx":
        meta["opset"] = str(OPSET)
    return meta


def write_verified(fmt: str, spec: DeploySpec, images: Sequence[Tensor], path: Path,
                   metadata: Mapping[str, str], *, label: str, tolerance: float) -> Check:
    """Write ``spec``'s graph as ``fmt`` (``onnx`` | ``torch-export``) at ``path`` once it
    reproduces the PyTorch outputs on ``images`` (``(C, H, W)`` validation images)."""
    example = check_inputs(spec, images)[0]
    what = f"The {fmt} graph of {label}"
    with atomic_path(Path(path)) as tmp:
        if fmt == "onnx":
            write_onnx(spec, example, tmp, metadata, label)
            run: Any = OnnxRunner(tmp)
        else:
            write_pt2(spec, example, tmp, metadata, label)
            run = load_pt2(tmp)[0]
        return verify(spec, run, images, tolerance=tolerance, what=what)
