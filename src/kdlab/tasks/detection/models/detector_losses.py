"""Detectron2's Faster R-CNN training losses, the model option ``losses: detectron2``.

torchvision and Detectron2 v0.6 (facebookresearch/detectron2 @ d1e04565, the code of the FCFD
authors' detection experiments) sample the same anchors and proposals and encode the same box
targets, but weigh them differently (Detectron2's defaults, which the authors' configs keep:
``config/defaults.py``, ``RPN.SMOOTH_L1_BETA`` and ``ROI_BOX_HEAD.SMOOTH_L1_BETA`` 0.0, every
``LOSS_WEIGHT`` and ``BBOX_REG_LOSS_WEIGHT`` 1.0, ``RPN.BATCH_SIZE_PER_IMAGE`` 256):

=================  ==============================  ========================================
loss               torchvision (the default)       Detectron2 (``losses: detectron2``)
=================  ==============================  ========================================
RPN objectness     BCE, mean over sampled anchors  BCE summed over the sampled anchors / (B x N)
RPN box            smooth L1 (beta 1/9) summed     L1 summed over the sampled positives
                   over the sampled positives /    / (B x N)
                   sampled anchors
ROI classifier     cross-entropy, mean             the same
ROI box            smooth L1 (beta 1/9) summed     L1 summed over the foreground ROIs /
                   over the foreground ROIs /      sampled ROIs
                   sampled ROIs
=================  ==============================  ========================================

B is the RPN sampler's anchors per image (``batch_size_per_image``) and N the number of
images: Detectron2 divides by the number of anchors it *meant* to sample
(``modeling/proposal_generator/rpn.py``, ``RPN.losses``), so an image with fewer labelled
anchors weighs less, where torchvision's mean does not. "L1" is fvcore's ``smooth_l1_loss``
with ``beta`` 0 (below 1e-5 it computes ``|x|``), as ``_dense_box_regression_loss``
(``modeling/box_regression.py``) and ``FastRCNNOutputLayers.box_reg_loss``
(``modeling/roi_heads/fast_rcnn.py``) call it; the ROI box loss's divisor is every sampled ROI,
foreground or not, as torchvision's.

Where they plug in: :class:`~kdlab.tasks.detection.models.detector.Detector` computes the ROI
losses itself (:func:`detectron2_fastrcnn_loss` in place of torchvision's ``fastrcnn_loss``);
the RPN computes its loss inside its ``forward`` from anchor labels and samples it does not
return, so :class:`Detectron2LossRPN` is torchvision's ``RegionProposalNetwork`` with only
``compute_loss`` overridden: anchors, matching, sampling, proposals and the parameter names
(weight files, ``kdlab export``) stay torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.rpn import RegionProposalNetwork

#: the values of the model option ``losses``
LOSSES = ("torchvision", "detectron2")


def l1_sum(pred: Tensor, target: Tensor) -> Tensor:
    """Detectron2's ``smooth_l1_loss(pred, target, beta=0.0, reduction="sum")``: plain L1."""
    return (pred - target).abs().sum()


def detectron2_rpn_loss(objectness: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor,
                        positive: Tensor, sampled: Tensor, normaliser: int
                        ) -> tuple[Tensor, Tensor]:
    """``RPN.losses`` of Detectron2: (objectness loss, box loss).

    ``objectness`` ``(A,)`` logits and ``deltas`` ``(A, 4)`` of every anchor of the batch,
    ``labels`` ``(A,)`` (1 object, 0 background), ``targets`` ``(A, 4)`` the encoded boxes the
    anchors matched; ``positive`` and ``sampled`` index the sampled positive and the sampled
    anchors; ``normaliser``: anchors per image the sampler aims at x images.
    """
    objectness_loss = F.binary_cross_entropy_with_logits(
        objectness[sampled], labels[sampled].to(objectness.dtype), reduction="sum")
    box_loss = l1_sum(deltas[positive], targets[positive])
    return objectness_loss / normaliser, box_loss / normaliser


def detectron2_fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                             regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``FastRCNNOutputLayers.losses`` of Detectron2 in torchvision's layout: (classifier loss,
    box loss), with the arguments of torchvision's ``fastrcnn_loss``.

    ``class_logits`` ``(R, K + 1)`` and ``box_regression`` ``(R, 4 (K + 1))`` with the
    background at index 0 (Detectron2 puts it last and has no deltas for it; a foreground ROI
    reads the deltas of its class in both); ``labels`` and ``regression_targets`` per image.
    """
    labels_ = torch.cat(labels)
    targets = torch.cat(regression_targets)
    classifier_loss = F.cross_entropy(class_logits, labels_)
    fg = torch.where(labels_ > 0)[0]
    fg_deltas = box_regression.reshape(labels_.numel(), -1, 4)[fg, labels_[fg]]
    box_loss = l1_sum(fg_deltas, targets[fg]) / max(labels_.numel(), 1)
    return classifier_loss, box_loss


class Detectron2LossRPN(RegionProposalNetwork):
    """torchvision's RPN with Detectron2's losses (:func:`detectron2_rpn_loss`); built from an
    RPN whose parts (anchor generator, head) and settings it takes over."""

    def __init__(self, rpn: RegionProposalNetwork) -> None:
        matcher, sampler = rpn.proposal_matcher, rpn.fg_bg_sampler
        super().__init__(rpn.anchor_generator, rpn.head, matcher.high_threshold,
                         matcher.low_threshold, sampler.batch_size_per_image,
                         sampler.positive_fraction, rpn._pre_nms_top_n, rpn._post_nms_top_n,
                         rpn.nms_thresh, rpn.score_thresh)
        self.box_coder, self.min_size = rpn.box_coder, rpn.min_size

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """torchvision's sampling, Detectron2's loss (the signature of the method it overrides)."""
        pos, neg = self.fg_bg_sampler(labels)
        pos_mask = torch.cat(pos)
        positive = torch.where(pos_mask)[0]
        sampled = torch.where(pos_mask | torch.cat(neg))[0]
        normaliser = self.fg_bg_sampler.batch_size_per_image * len(labels)
        return detectron2_rpn_loss(objectness.flatten(), pred_bbox_deltas, torch.cat(labels),
                                   torch.cat(regression_targets), positive, sampled, normaliser)


__all__ = ["LOSSES", "Detectron2LossRPN", "detectron2_fastrcnn_loss", "detectron2_rpn_loss",
           "l1_sum"]
