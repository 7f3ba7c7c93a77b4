"""Semantic segmentation networks, seen through :class:`~kdlab.models.staged.view.Staged`.

Every builder is registered in ``MODELS`` with ``builder.task = "segmentation"`` and takes
``num_classes``, ``in_channels``, ``input_size`` (the crop of the metadata pass) and ``aux``
(an auxiliary FCN head, off by default); those with an ImageNet backbone also take
``pretrained`` (a local torchvision state dict of the backbone, or ``True`` for torchvision's
download). The view follows the segmentation conventions of the design: backbone stages, then
the decoder as the head (``pre_pool`` = decoder minus its last conv, identity pool,
``classifier`` = the last 1x1 conv); ``Features.logits`` is the score map at the decoder's
resolution, not upsampled; ``Features.embedding`` is the decoder's feature map.

- ``torchvision_nets.py``: torchvision's ``deeplabv3_resnet50/101``,
  ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50/101``, ``lraspp_mobilenet_v3_large``.
- ``dilated.py``: the pairs of the segmentation-KD literature at output stride 8 (PSPNet and
  DeepLabV3 on ResNet-18 / ResNet-101 / MobileNetV2), on torchvision's backbones.
- ``cirkd.py``: the same networks as CIRKD's code builds them (``*_cirkd``: deep-stem ResNets,
  CIRKD's head widths, its weight files via ``cirkd_weights.py``; backbone in
  ``deep_stem.py``).
- ``small.py``: CPU networks for the 64x64 Fashion-MNIST scenes (``seg_resnet20``,
  ``seg_resnet8``).
"""
