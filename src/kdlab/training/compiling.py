"""``train.compile``: the trained model and the frozen teacher compiled apart, with a fallback.

Two graphs are compiled with :func:`torch.compile`:

- the trained module (the distiller with the student and its extras, DDP-wrapped or not), whose
  forward and backward run as one training graph;
- the frozen teacher's inference passes (the features and logits of the distiller's
  :class:`~kdlab.methods.teacher_source.FrozenTeacher` source), compiled on their own under
  ``torch.inference_mode``: the training graph breaks at the teacher call
  (``torch.compiler.disable``) and calls the teacher's own compiled graph, which has no
  autograd to record and is compiled once for every method.

Compiling costs tens of seconds on a CPU (the first step); :class:`CompiledModel` prints that
cost once. When a graph fails to compile (a backend error, a missing C compiler, an operator
the compiler refuses), the failing part falls back to eager execution for the rest of the run
with a one-line warning, instead of ending the run: a failure in the first compiled training
step (forward or backward, whose graph is compiled lazily) reruns that step eagerly; the
optimiser's gradients are cleared first, so the step is taken once (state a method changed in
the failed forward before the failure, e.g. BatchNorm statistics of a graph that had already
run, is changed once more by the rerun). An error of the step itself, not of the compiler, is
raised again by the eager rerun, after the warning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from kdlab.errors import UserError

T = TypeVar("T")


def compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a failing compilation raises (dynamo's, which wrap the backends')."""
    from torch._dynamo.exc import TorchDynamoException

    return (TorchDynamoException,)


def backend_of(setting: bool | str) -> str:
    """``train.compile`` as a backend name: true is inductor, the default of torch.compile."""
    if setting is True:
        return "inductor"
    if isinstance(setting, str) and setting:
        from torch._dynamo import list_backends

        known = list_backends(exclude_tags=())
        if setting not in known:
            raise UserError(f"train.compile {setting!r} is not a torch.compile backend; use true "
                            f"(inductor) or one of {', '.join(sorted(known))}.")
        return setting
    raise UserError(f"train.compile {setting!r} is not known; use true, false or a backend name.")


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class CompiledTeacher:
    """The frozen teacher's inference passes (``features(x)`` and ``teacher(x)``), each run
    through its own compiled graph; eager for good after a compile failure (one warning)."""

    def __init__(self, teacher: nn.Module, backend: str,
                 warn: Callable[[str], None] = print) -> None:
        self.teacher = teacher
        self.warn = warn
        self.failed = False
        self._features = torch.compile(teacher.features, backend=backend)
        self._forward = torch.compile(teacher, backend=backend)

    def _run(self, compiled: Callable[[Tensor], Any], eager: Callable[[Tensor], Any],
             x: Tensor) -> Any:
        if self.failed:
            return eager(x)
        try:
            return compiled(x)
        except compile_errors() as e:
            self.failed = True
            self.warn(f"train.compile: the teacher's graph failed to compile ({_one_line(e)}); "
                      "running the teacher eagerly.")
            return eager(x)

    @torch.compiler.disable
    def features(self, x: Tensor) -> Any:
        return self._run(self._features, self.teacher.features, x)

    @torch.compiler.disable
    def __call__(self, x: Tensor) -> Tensor:
        return self._run(self._forward, self.teacher, x)


class CompiledModel(nn.Module):
    """``module`` run through ``torch.compile``; eager for good, with a one-line warning, once
    a compilation fails. :meth:`step` runs one whole training step and reruns the first one
    eagerly when its forward or backward fails to compile; it prints the compile cost once."""

    def __init__(self, module: nn.Module, backend: str,
                 warn: Callable[[str], None] = print) -> None:
        super().__init__()
        self.module = module  # a submodule: train() / eval() / state_dict() reach it
        object.__setattr__(self, "_compiled", torch.compile(module, backend=backend))
        object.__setattr__(self, "_warn", warn)
        self.backend = backend
        self.failed = False
        self.proven = False  # one whole step ran compiled
        self.compile_seconds: float | None = None

    @property
    def _orig_mod(self) -> nn.Module:  # what kdlab.training.distributed.unwrap looks for
        return self.module

    def fall_back(self, e: BaseException) -> None:
        self.failed = True
        self._warn(f"train.compile: the training graph failed to compile ({_one_line(e)}); "
                   "training eagerly.")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.module(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except compile_errors() as e:
            self.fall_back(e)
            return self.module(*args, **kwargs)

    def step(self, run: Callable[[nn.Module], T], device: torch.device | None = None) -> T:
        """``run(self)``: one training step (forward, backward, optimiser). The first one is
        timed (the compile cost, printed once) and rerun eagerly if it fails."""
        if self.proven or self.failed:
            return run(self)
        t0 = time.perf_counter()
        try:
            out = run(self)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - a lazily compiled backward raises anything
            self.fall_back(e)
            return run(self)
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        self.compile_seconds = time.perf_counter() - t0
        self.proven = not self.failed
        if self.proven:
            self._warn(f"train.compile ({self.backend}): compiled in {self.compile_seconds:.1f} s "
                       "(the first step, compiling included); later steps run compiled.")
        return out


def compile_run(model: nn.Module, distiller: nn.Module, setting: bool | str,
                warn: Callable[[str], None] = print) -> CompiledModel:
    """Compile ``model`` (the distiller, or its DDP wrapper) and, apart, the distiller's frozen
    teacher for inference; ``setting`` is ``train.compile`` (true or a backend name)."""
    from kdlab.methods.teacher_source import FrozenTeacher

    backend = backend_of(setting)
    source = getattr(distiller, "teacher_source", None)
    if isinstance(source, FrozenTeacher):  # not a teacher cache: nothing runs then
        distiller.use_teacher_source(
            source.with_runner(CompiledTeacher(source.network(), backend, warn)))
    return CompiledModel(model, backend, warn)
