"""Per-chunk BatchNorm: one batched call that normalises like several separate calls.

FCFD (Liu et al., ICLR 2023) runs several sampled paths through the same network's later
stages. Concatenated along the batch, their convolutions run as one larger call; but a
BatchNorm on batch statistics would then mix the paths' statistics, and each path may keep
its own running statistics (Sec. 2.3, Fig. 3; :class:`kdlab.methods.fcfd.path_bn.PathStats`).
:func:`chunked_batchnorm` makes every BatchNorm inside a ``with`` block treat its input as
consecutive chunks of ``chunk`` samples and run its own forward once per chunk, with chunk
``j``'s running statistics swapped in where given: outputs, gradients and running-statistics
updates are those of the separate calls, in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

#: the running statistics one chunk uses in one BatchNorm layer, by buffer name
Buffers = Mapping[str, Tensor]
#: per chunk: the BatchNorm layers that use other statistics than their own, and those
ChunkStats = Mapping[_BatchNorm, Buffers]


def every_batchnorm(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    """Every BatchNorm layer inside ``modules`` (with or without running statistics), once."""
    seen: set[int] = set()
    found: list[_BatchNorm] = []
    for root in modules:
        for m in root.modules():
            if isinstance(m, _BatchNorm) and id(m) not in seen:
                seen.add(id(m))
                found.append(m)
    return found


def _uses_batch_statistics(bn: _BatchNorm) -> bool:
    return bn.training or not bn.track_running_stats


def _chunked_forward(
    bn: _BatchNorm, base: Callable[[Tensor], Tensor], chunk: int,
    stats: Sequence[ChunkStats | None], x: Tensor,
) -> Tensor:
    n = x.shape[0] // chunk
    if n * chunk != x.shape[0]:
        raise ValueError(f"a batch of {x.shape[0]} is not a whole number of {chunk}-chunks")
    own = [s.get(bn) if s is not None and j < n else None for j, s in enumerate(stats)]
    if n <= 1 or (not _uses_batch_statistics(bn) and not any(own)):
        # one chunk, or per-sample normalisation with shared statistics: one call is exact
        with _swapped(bn, own[0] if own else None):
            return base(x)
    outs = []
    for j, part in enumerate(x.split(chunk)):
        with _swapped(bn, own[j] if j < len(own) else None):
            outs.append(base(part))
    return torch.cat(outs)


@contextlib.contextmanager
def _swapped(bn: _BatchNorm, buffers: Buffers | None) -> Iterator[None]:
    if not buffers:
        yield
        return
    saved = {name: bn._buffers[name] for name in buffers}
    try:
        for name, value in buffers.items():
            bn._buffers[name] = value
        yield
    finally:
        for name, value in saved.items():
            bn._buffers[name] = value


@contextlib.contextmanager
def chunked_batchnorm(
    modules: Iterable[nn.Module], chunk: int, stats: Sequence[ChunkStats | None] = (),
) -> Iterator[None]:
    """Inside the block, every BatchNorm in ``modules`` splits its input into consecutive
    chunks of ``chunk`` samples and normalises each with a call of its own.

    ``stats[j]`` maps a BatchNorm layer to the running-statistics buffers chunk ``j`` uses
    (and updates) there instead of the layer's own; a layer or chunk it does not name uses
    the layer's own buffers. A layer that normalises with fixed, shared running statistics
    (eval mode) runs the whole batch in one call, which is the same thing.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    patched: list[tuple[_BatchNorm, object]] = []
    missing = object()
    try:
        for bn in every_batchnorm(modules):
            before = bn.__dict__.get("forward", missing)
            base = bn.forward
            bn.forward = (  # type: ignore[method-assign]
                lambda x, bn=bn, base=base: _chunked_forward(bn, base, chunk, stats, x)
            )
            patched.append((bn, before))
        yield
    finally:
        for bn, before in patched:
            if before is missing:
                del bn.forward
            else:
                bn.forward = before  # type: ignore[method-assign]
