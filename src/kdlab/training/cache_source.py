"""The teacher source a run hands its method when the frozen network does not run: the
soft-label cache of ``data.teacher_cache`` (:mod:`kdlab.data.soft_labels`).

A method reads its teacher only through its source (:mod:`kdlab.methods.teacher_source`).
:class:`CacheSource` answers the logits of the batch's views from the cache and refuses the
rest in one sentence, so a method that needs more than the logits cannot run the teacher
behind the cache's back. :func:`check_cache_use` refuses such a method before anything is
loaded, from what it declares (:attr:`~kdlab.methods.base.Distiller.teacher_reads`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from kdlab.errors import UserError

if TYPE_CHECKING:
    from kdlab.core.config import RunConfig
    from kdlab.methods.base import Batch, Distiller

_HOLDS_LOGITS_ONLY = ("The teacher cache (data.teacher_cache) holds the teacher's logits only, "
                      "but this method reads {what}; remove data.teacher_cache.")


class CacheSource:
    """A :class:`~kdlab.data.soft_labels.CachedTeacher` as a teacher source: the logits of
    this epoch's stored views of the batch's images (by dataset index), on the images'
    device; the teacher does not run."""

    def __init__(self, cached: Any) -> None:
        self.cached = cached

    def logits(self, batch: Batch) -> Tensor:
        if batch.index is None:
            raise ValueError("a teacher cache needs the batch's dataset indices")
        return self.cached.logits(batch.index).to(batch.images.device)

    def features(self, batch: Batch) -> Any:
        raise UserError(_HOLDS_LOGITS_ONLY.format(what="its features"))

    def network(self) -> nn.Module:
        raise UserError(_HOLDS_LOGITS_ONLY.format(what="its network's own outputs"))


def check_cache_use(method: type[Distiller], cfg: object, task: str = "classification") -> None:
    """A UserError unless ``method`` with settings ``cfg`` can train from a teacher cache on
    ``task``: it distils from a fixed teacher, reads only its logits, in eval mode, and the
    task's teacher outputs are class logits (what a cache stores)."""
    name = getattr(method, "__name__", str(method))
    if not method.needs_teacher:
        raise UserError(f"Method {name} does not distil from a fixed teacher, so it has no use "
                        "for data.teacher_cache; remove data.teacher_cache.")
    if task != "classification":
        raise UserError(f"data.teacher_cache holds one vector of class logits per training "
                        f"image, which a {task} run's teacher does not give; remove "
                        "data.teacher_cache.")
    if method.teacher_reads != "logits":
        raise UserError(f"Method {name} needs the teacher's features, not only its logits, so it "
                        "cannot train from data.teacher_cache; remove data.teacher_cache or "
                        "use a logit method such as kd or dkd.")
    if getattr(cfg, "teacher_bn", "eval") != "eval":
        raise UserError(f"Method {name} runs the teacher's BatchNorm on batch statistics "
                        "(method.teacher_bn=batch), which a cache of single views cannot "
                        "reproduce; use method.teacher_bn=eval or remove data.teacher_cache.")


def check_teacher_cache(cfg: RunConfig) -> None:
    """``data.teacher_cache`` is a finished cache and the run's method can train from it
    (:func:`check_cache_use`); else a UserError. Data, augmentation and teacher are checked
    against the cache when they are loaded (:func:`attach_teacher_cache`)."""
    from kdlab.core.config import build_dataclass
    from kdlab.data.soft_labels import TeacherCache
    from kdlab.methods import METHODS

    method = METHODS.get(cfg.method_name).for_task(cfg.task)
    options = build_dataclass(method.Config, cfg.method_options, where=f"method.{cfg.method_name}")
    check_cache_use(method, options, cfg.task)
    assert cfg.data.teacher_cache is not None
    TeacherCache.open(cfg.data.teacher_cache)


def attach_teacher_cache(distiller: Distiller, cached: Any, teacher_model: str | None) -> None:
    """Check that the cache was built from the distiller's teacher (the SHA-256 of its
    weights, then a few entries recomputed) and make it the distiller's teacher source."""
    from kdlab.data.soft_labels import weights_sha256

    if distiller.teacher is None:
        raise UserError("data.teacher_cache is set but the run has no teacher; set "
                        "model.teacher and its checkpoint, or remove data.teacher_cache.")
    cached.cache.check_teacher(teacher_model, weights_sha256(distiller.teacher))
    check_cached_entries(cached, distiller.teacher)
    distiller.use_teacher_source(CacheSource(cached))


def check_cached_entries(cached: Any, teacher: nn.Module) -> None:
    """Recompute the cache's probed entries (:class:`~kdlab.data.soft_labels.Probe`) with
    ``teacher`` (eval mode, fp32) and refuse a cache whose stored outputs differ: values
    moved about or edited, or outputs of other weights under this teacher's checksum."""
    probe = cached.probe
    if probe is None:
        return
    device = next(teacher.parameters(), torch.empty(0)).device
    with torch.inference_mode():
        logits = teacher(probe.inputs(cached.cache).to(device)).float().cpu()
    found = cached.cache.mismatch(probe.index, probe.view, logits)
    if found is not None:
        raise UserError(
            f"The teacher cache {str(cached.cache.path)!r} does not hold this teacher's "
            f"outputs: {len(probe.index)} stored entries recomputed with the run's teacher "
            f"differ ({found}); its values were edited or moved, or it was built from other "
            "weights: build it again with `kdlab cache-teacher`.")
