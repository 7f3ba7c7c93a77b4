"""Which stage outputs of two staged networks a feature method pairs, and named outputs of a
staged pass.

The benchmarks pair the stage outputs after each network's stem (the residual stages),
aligned from the deepest stage when the networks have different numbers of them
(RepDistiller ``feat[1:-1]``, mdistiller ``feats[1:]``); AT, VID and OFD use this pairing.
"""

from __future__ import annotations

from torch import Tensor

from kdlab.errors import UserError
from kdlab.models.staged.view import Features, Staged


def stage_pairs(
    student: Staged, teacher: Staged, stages: list[int] | None, *, include_stem: bool = False
) -> list[tuple[int, int]]:
    """(student stage, teacher stage) pairs of the stage outputs after each network's stem
    (:meth:`Staged.stages_after_stem`), aligned from the deepest; ``include_stem`` takes
    every stage. ``stages`` selects pairs by their index in that list (negative allowed)."""
    s_idx = list(range(student.num_stages)) if include_stem else student.stages_after_stem()
    t_idx = list(range(teacher.num_stages)) if include_stem else teacher.stages_after_stem()
    return _select(s_idx, t_idx, stages)


def _select(s_idx: list[int], t_idx: list[int], stages: list[int] | None) -> list[tuple[int, int]]:
    n = min(len(s_idx), len(t_idx))
    pairs = list(zip(s_idx[len(s_idx) - n:], t_idx[len(t_idx) - n:], strict=True))
    if stages is None:
        return pairs
    picked = []
    for s in stages:
        if not -n <= s < n:
            raise UserError(
                f"Stage {s} does not exist: the networks share {n} stages; use method.stages "
                f"values in 0..{n - 1} (or negative indices)."
            )
        picked.append(pairs[s])
    if not picked:
        raise UserError("method.stages is empty; list at least one stage or leave it unset.")
    return picked


def feature_at(features: Features, layer: str) -> Tensor:
    """The named output of a staged pass: ``embedding``, ``logits`` or ``stage<k>``
    (``k`` 0-based; negative counts from the last stage, e.g. ``stage-1``)."""
    if layer == "embedding":
        return features.embedding
    if layer == "logits":
        return features.logits
    if layer.startswith("stage"):
        try:
            k = int(layer[len("stage"):])
            return features.stages[k]
        except (ValueError, IndexError):
            pass
    raise UserError(
        f"Unknown layer {layer!r}; use 'embedding', 'logits' or 'stage<k>' with k in "
        f"0..{len(features.stages) - 1} (negative counts from the end)."
    )
