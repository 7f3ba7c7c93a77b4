"""Helpers shared by the per-method cost profiles (``frskd_profile.py``, ``reviewkd_profile.py``).

FLOPs of a training step with a corrected convolution-backward count, minor page faults,
the storages autograd keeps for the backward, the machine's load and the profiler tables.
The distiller builder, the step and the part timer live in ``fcfd_profile.py`` (same
folder). Not part of the test suite.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from fcfd_profile import build, step
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def conv_backward_flop(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int],
                       *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``convolution_backward`` FLOPs: the forward's count once per gradient computed.

    Each multiply-add of the forward appears once in the input gradient and once in the
    weight gradient. torch 2.14's formula forgets ``groups`` in the weight-gradient term and
    counts a depth-wise convolution's weight gradient ``channels`` times too high.
    """
    transposed, output_mask = args[4], args[7]
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter(*, grouped_fix: bool = True, depth: int | None = 2) -> FlopCounterMode:
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flop} if grouped_fix else {}
    return FlopCounterMode(display=False, depth=depth, custom_mapping=mapping)


def count_step(method: str, options: dict[str, Any], *, grouped_fix: bool = True) -> int:
    d, opt, x, y = build(method, options)
    step(d, opt, x, y)  # untimed, also builds optimiser state
    with flop_counter(grouped_fix=grouped_fix) as fc:
        step(d, opt, x, y)
    return fc.get_total_flops()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` gives them."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


@contextlib.contextmanager
def saved_storages(*into: dict[int, int]) -> Iterator[None]:
    """Record the storages autograd saves for the backward (pointer -> bytes) in each dict.
    The innermost hooks alone see a tensor, so a nested recorder fills the outer dicts too."""
    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        for d in into:
            d[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def record_calls(module: torch.nn.Module, *into: dict[int, int]) -> None:
    """Record what ``module``'s forward saves for the backward (instance attribute)."""
    forward = module.forward

    def recorded(*args: Any) -> Any:
        with saved_storages(*into):
            return forward(*args)

    object.__setattr__(module, "forward", recorded)


def saved_memory_mib(
    method: str, options: dict[str, Any], part: Callable[[Any], Iterable[torch.nn.Module]]
) -> tuple[float, float, float]:
    """MiB autograd keeps for the backward of one training forward of ``method``: in all, in
    the modules ``part(distiller)`` gives, and in the rest (distinct storages)."""
    d, _, x, y = build(method, options)
    everything: dict[int, int] = {}
    inside: dict[int, int] = {}
    for module in part(d):
        record_calls(module, everything, inside)
    with saved_storages(everything):
        _, losses = d(x, y)
    sum(losses.values()).backward()
    rest = sum(v for k, v in everything.items() if k not in inside)
    mib = 2**20
    return sum(everything.values()) / mib, sum(inside.values()) / mib, rest / mib


def profiler_tables(method: str, label: str, steps: int, rows: int) -> list[str]:
    """torch.profiler's top operators by self CPU time over ``steps`` training steps of
    ``method`` (defaults, after 3 untimed ones), by operator and by input shape."""
    d, opt, x, y = build(method, {})
    for _ in range(3):
        step(d, opt, x, y)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step(d, opt, x, y)
    by_op = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    by_shape = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=32,
        max_shapes_column_width=70)
    return [f"== torch.profiler, {label}, {steps} steps: top operators by self CPU time",
            by_op, "", "== the same, by input shape", by_shape, ""]
