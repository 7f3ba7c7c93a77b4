"""Path-aware BatchNorm: separate running statistics per data path, shared affine weights.

FCFD (Liu et al., ICLR 2023), Sec. 2.3 and Fig. 3: a BatchNorm layer that receives inputs
computed by different sets of modules (e.g. a student stage fed with a bridged *teacher*
feature) must not mix their running statistics, or inference is spoiled. The affine
parameters stay shared.

:class:`PathStats` keeps the network an ordinary model: the BN modules' own buffers remain
the statistics of the pure path (used for evaluation and export), and for every other path a
copy of each BN's ``running_mean`` / ``running_var`` / ``num_batches_tracked`` lives as a
buffer of this module (so it is moved by ``.to()``, saved in checkpoints and broadcast by
DDP). :meth:`PathStats.use` swaps a path's copies into the BN modules for the duration of
that path's forward pass and puts the pure statistics back afterwards; :meth:`PathStats.chunked`
does the same for several paths run as one batch, each chunk with its own statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from kdlab.nn.chunked_bn import ChunkStats, chunked_batchnorm

_STATS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorms(modules: Iterable[nn.Module]) -> list[_BatchNorm]:
    """Every BatchNorm layer (with running statistics) inside ``modules``, each once, in order."""
    seen: set[int] = set()
    found: list[_BatchNorm] = []
    for root in modules:
        for m in root.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats and id(m) not in seen:
                seen.add(id(m))
                found.append(m)
    return found


class _OnePath(nn.Module):
    """The statistics copies of one path: buffers ``{i}_running_mean`` etc. per BN layer."""

    def __init__(self, bns: list[_BatchNorm]) -> None:
        super().__init__()
        object.__setattr__(self, "bns", bns)  # not submodules: they belong to the networks
        for i, bn in enumerate(bns):
            for name in _STATS:
                self.register_buffer(f"bn{i}_{name}", getattr(bn, name).detach().clone())


class PathStats(nn.Module):
    """Per-path BatchNorm running statistics for modules shared by several data paths.

    >>> stats = PathStats()
    >>> stats.add_path("t2s_k2", [student.stage_modules(2), student.head_modules()])
    >>> with stats.use("t2s_k2"):
    ...     out = student.run_from(1, bridged_teacher_feature)

    Paths are registered once, at construction; the copies start from the modules' current
    statistics. Outside :meth:`use` the BN modules hold their own (pure-path) buffers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.paths = nn.ModuleDict()

    def add_path(self, name: str, modules: Iterable[nn.Module]) -> None:
        """Give path ``name`` its own statistics in every BatchNorm inside ``modules``."""
        if name in self.paths:
            raise ValueError(f"path {name!r} is registered twice")
        self.paths[name] = _OnePath(batchnorms(modules))

    def names(self) -> list[str]:
        return list(self.paths.keys())

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[None]:
        """Run the body with path ``name``'s statistics swapped into its BatchNorm layers."""
        path = self.paths[name]
        saved: list[dict[str, torch.Tensor]] = []
        try:
            for i, bn in enumerate(path.bns):
                saved.append({s: bn._buffers[s] for s in _STATS})
                for s in _STATS:
                    bn._buffers[s] = path._buffers[f"bn{i}_{s}"]
            yield
        finally:
            for bn, old in zip(path.bns, saved, strict=False):  # saved may be partial
                for s, t in old.items():
                    bn._buffers[s] = t

    def statistics(self, name: str) -> ChunkStats:
        """Path ``name``'s running-statistics buffers, by the BatchNorm layer they belong to."""
        path = self.paths[name]
        return {bn: {s: path._buffers[f"bn{i}_{s}"] for s in _STATS}
                for i, bn in enumerate(path.bns)}

    def chunked(self, names: Sequence[str | None], chunk: int,
                modules: Iterable[nn.Module]) -> contextlib.AbstractContextManager[None]:
        """Run the body on paths concatenated along the batch, ``chunk`` samples each, in the
        order of ``names``: every BatchNorm in ``modules`` normalises each path's chunk
        separately, with (and updating) path ``names[j]``'s statistics where it has copies
        and the layer's own buffers otherwise (``None``: the pure path) - as :meth:`use`
        around one forward pass per path would."""
        return chunked_batchnorm(
            modules, chunk, [None if n is None else self.statistics(n) for n in names]
        )
