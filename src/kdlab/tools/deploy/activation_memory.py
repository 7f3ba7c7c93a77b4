"""Peak activation memory of a forward pass: the most tensor bytes alive at once.

:class:`ActivationMeter` is a ``TorchDispatchMode``: every tensor an operator returns is
counted from the moment its storage appears until the storage is freed (a weak reference to
the storage says when), so the peak is that of the tensors the forward pass holds at once:
the intermediate activations and the outputs, not the parameters, buffers or inputs (they
exist before the pass and are excluded), nor an allocator's cached or fragmented memory. It
is the same number on any machine for a given network, input size and torch version (views
and in-place results share their storage and count once).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kdlab.training.model_cost import evaluating


class ActivationMeter(TorchDispatchMode):
    """Counts the bytes of the storages operators create while active; ``peak_bytes`` is the
    largest total alive at once. Storages of ``exclude`` tensors are never counted."""

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self._known: set[int] = {t.untyped_storage().data_ptr() for t in exclude}
        self._refs: dict[int, weakref.ref[Any]] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def _freed(self, key: int, size: int) -> None:
        self.live_bytes -= size
        self._known.discard(key)
        self._refs.pop(key, None)

    def _count(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if key in self._known or size == 0:
            return
        self._known.add(key)
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._refs[key] = weakref.ref(storage, lambda _, k=key, n=size: self._freed(k, n))

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                self._count(t)
        return out


def peak_activation_bytes(net: nn.Module, images: Tensor) -> int:
    """The peak activation bytes of ``net(images)`` in eval mode without autograd (see the
    module docstring)."""
    exclude = [*net.parameters(), *net.buffers(), images]
    with evaluating(net), torch.inference_mode(), ActivationMeter(exclude) as meter:
        out = net(images)
        del out
    return meter.peak_bytes
