"""DML: deep mutual learning, online distillation between peers trained from scratch.

Zhang, Xiang, Hospedales & Lu, "Deep Mutual Learning", CVPR 2018. ``K`` peers learn
together; peer ``k`` minimises (paper Eq. 10)::

    L_k = CE(p_k, y) + 1 / (K - 1) * sum_{l != k} KL(p_l || p_k)

where the other peers' predictions ``p_l`` are targets (detached). The peers are the student
plus the networks named in ``peers`` (built with :func:`kdlab.models.build_model` for the
student's classes and input shape); with ``peers`` empty, one more network of the student's
architecture, freshly initialised.

Optimisation: all peers live in this module, so the trainer's one optimiser holds every
peer's parameters. Because each peer's targets are detached, the gradient of the summed loss
with respect to peer ``k``'s parameters is exactly the gradient of ``L_k``, and SGD (with
momentum and weight decay, which act per parameter) on the sum is the same as one SGD
optimiser per peer with identical hyper-parameters. The paper updates the peers one after
the other within an iteration, recomputing predictions after each update; here all peers
step simultaneously from the same predictions, as most re-implementations do.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.core.settings import setting
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.logits import kd_loss
from kdlab.models import build_model
from kdlab.models.staged.view import Features, Staged
from kdlab.tasks import Task


def _fresh_copy(model: Staged) -> Staged:
    """A deep copy of ``model`` with every layer re-initialised from the global RNG."""
    peer = copy.deepcopy(model)
    for m in peer.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return peer


@METHODS.register("dml")
class DML(Distiller):
    """Deep mutual learning (Zhang et al., CVPR 2018): every peer is trained and reported."""

    needs_teacher = False

    uses_stages = False  # logits and pooled embeddings only: ViTs too

    @dataclass
    class Config:
        peers: list[str] = field(default_factory=list)  # model names; [] = a student copy
        # the paper weighs CE and the mimicry KL equally
        kl_weight: float = setting(1.0, range=">= 0")
        temperature: float = setting(1.0, range="> 0")  # the paper uses plain softmax predictions

    def __init__(
        self,
        student: Staged,
        teacher: Staged | None = None,
        cfg: DML.Config | None = None,
        *,
        train_size: int | None = None,
        task: Task | None = None,
    ) -> None:
        super().__init__(student, None, cfg, train_size=train_size, task=task)
        c = self.cfg
        in_channels, size, _ = student.input_shape
        if c.peers:
            peers = [
                build_model(
                    name,
                    num_classes=student.num_classes,
                    in_channels=in_channels,
                    input_size=size,
                )
                for name in c.peers
            ]
            self.peer_names = [f"peer{i + 1}_{name}" for i, name in enumerate(c.peers)]
        else:
            peers = [_fresh_copy(student)]
            self.peer_names = ["peer1"]
        device = next(student.parameters()).device
        self.peers = nn.ModuleList(p.to(device) for p in peers)

    def networks(self) -> list[Staged]:
        """The student, then the other peers."""
        return [self.student, *self.peers]

    def teacher_pass(self, batch: Batch, student: Features) -> list[Tensor]:
        """The other peers' logits (trained, with gradient): the student's teachers."""
        return [net(batch.images) for net in self.peers]

    def losses(self, batch: Batch, student: Features, teacher: list[Tensor]) -> Losses:
        """Every peer's CE (the student's is the template's ``ce``) and mimicry KL."""
        logits = [student.logits, *teacher]
        targets_soft = [z.detach() for z in logits]
        c = self.cfg
        names = ["student", *self.peer_names]
        losses: Losses = {}
        for k, (name, z) in enumerate(zip(names, logits, strict=True)):
            prefix = "" if k == 0 else f"{name}_"
            if k:
                losses[f"{prefix}ce"] = F.cross_entropy(z, batch.targets)
            others = [kd_loss(z, t, c.temperature) for j, t in enumerate(targets_soft) if j != k]
            losses[f"{prefix}kl"] = c.kl_weight * torch.stack(others).mean()
        return losses

    def evaluated(self) -> dict[str, nn.Module]:
        """Every peer, the student first (it selects the best checkpoint)."""
        return dict(zip(["student", *self.peer_names], self.networks(), strict=True))

    def exported(self) -> dict[str, nn.Module]:
        """Every peer as its ordinary model."""
        return {name: net.net for name, net in self.evaluated().items()}
