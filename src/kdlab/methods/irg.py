"""Instance relationship graph KD: vertices, edges and their transformation across layers."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from kdlab.errors import UserError
from kdlab.losses.relations import irg_edge_loss, irg_transformation_loss, irg_vertex_loss
from kdlab.methods import METHODS
from kdlab.methods.base import Distiller, Losses
from kdlab.methods.rkd import feature_at
from kdlab.models.staged import Features


@METHODS.register("irg")
class IRG(Distiller):
    """IRG (Liu et al., "Knowledge Distillation via Instance Relationship Graph", CVPR 2019).

    ``ce_weight * CE + vertex_weight * L_V(logits) + edge_weight * sum_l L_E(A_T^L, A_S^l)
    + transform_weight * L_IRG-t``. In
    the paper's one-to-many mode (``one_to_many``) the teacher's last layer (logits) guides
    every student layer in ``edge_layers``; otherwise each layer is matched with the same
    layer of the teacher. IRG-t compares how far each instance moves between the two
    ``transform_layers`` (made equal-sized by parameter-free pooling). Edges and
    transformations use squared distances, each divided by its largest value. Default
    weights (0.1, 5, 5) follow a common re-implementation's CIFAR setting; tune per pair.
    """

    @dataclass
    class Config:
        vertex_weight: float = 0.1
        edge_weight: float = 5.0
        transform_weight: float = 5.0
        edge_layers: list[str] = field(default_factory=lambda: ["logits", "embedding",
                                                                 "stage-1"])
        one_to_many: bool = True
        transform_layers: list[str] = field(default_factory=lambda: ["stage-2", "stage-1"])
        ce_weight: float = 1.0

    def setup(self) -> None:
        if len(self.cfg.transform_layers) != 2:
            raise UserError(
                "method.transform_layers must name exactly two layers, e.g. "
                "[stage-2, stage-1]."
            )

    def losses(
        self,
        student: Features,
        teacher: Features | None,
        targets: Tensor,
        index: Tensor | None = None,
    ) -> Losses:
        assert teacher is not None
        c = self.cfg
        out: Losses = {}
        if c.vertex_weight:
            out["irg_vertex"] = c.vertex_weight * irg_vertex_loss(student.logits, teacher.logits)
        if c.edge_weight and c.edge_layers:
            edge = 0.0
            for layer in c.edge_layers:
                t_layer = "logits" if c.one_to_many else layer
                edge = edge + irg_edge_loss(feature_at(student, layer),
                                            feature_at(teacher, t_layer))
            out["irg_edge"] = c.edge_weight * edge
        if c.transform_weight:
            la, lb = c.transform_layers
            out["irg_transform"] = c.transform_weight * irg_transformation_loss(
                (feature_at(student, la), feature_at(student, lb)),
                (feature_at(teacher, la), feature_at(teacher, lb)))
        return out
