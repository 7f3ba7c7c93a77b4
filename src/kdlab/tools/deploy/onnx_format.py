"""ONNX files through ``torch.onnx`` and their runs in ``onnxruntime``.

The graph is captured by ``torch.export`` and translated by ``torch.onnx.export(...,
dynamo=True)`` at opset :data:`OPSET`, one file with the weights inside (no external data),
the free dimensions named (``batch``, ``height``, ``width``) and kdlab's metadata as the
model's ``metadata_props``. :class:`OnnxRunner` runs a file on the CPU with a stated number
of intra-op threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdlab.errors import UserError
from kdlab.tasks.deploy import DeploySpec
from kdlab.tools.deploy.capture import INPUT, capture_example, dynamic_shapes, failed, quiet

#: the ONNX opset the files are written at (onnxruntime >= 1.14 runs it)
OPSET = 18
EXTRA = "pip install 'kdlab[deploy]'"


def require_onnx() -> None:
    """A UserError naming the extra when onnx, onnxscript or onnxruntime is missing."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"ONNX export and onnxruntime need {', '.join(missing)}: {EXTRA}.")


def write_onnx(spec: DeploySpec, images: Tensor, path: Path, metadata: Mapping[str, str],
               label: str) -> None:
    """Write the spec's graph, traced on an example from ``images``, to ``path``."""
    require_onnx()
    example = capture_example(spec, images)
    try:
        with spec.capture(), torch.no_grad(), quiet():
            program = torch.onnx.export(
                spec.module, (example,), None, dynamo=True, verbose=False,
                dynamic_shapes=dynamic_shapes(spec), input_names=[INPUT],
                output_names=list(spec.outputs), opset_version=OPSET, optimize=True)
    except Exception as e:  # torch.export and torch.onnx raise many types; one answer
        raise failed("ONNX export", label, e) from None
    program.model.metadata_props.update(dict(metadata))
    program.save(str(path), external_data=False)


def read_onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    require_onnx()
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


class OnnxRunner:
    """An onnxruntime CPU session of an ONNX file: ``runner(images) -> tuple of tensors``.

    ``threads``: intra-op threads (inter-op 1, sequential execution); onnxruntime's own
    default when None."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        require_onnx()
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors are its own pybind types
            raise UserError(f"onnxruntime cannot load {str(path)!r} ({str(e)[:300]}); "
                            "export it again with `kdlab export --format onnx`.") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        feed = {self.input: np.ascontiguousarray(images.detach().cpu().numpy())}
        return tuple(torch.from_numpy(np.asarray(out)) for out in self.session.run(None, feed))
