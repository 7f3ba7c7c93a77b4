"""The pairs ``kdlab bench`` times (``--preset``) and its default method lists.

Plain data without torch, so that ``kdlab bench --help`` lists them without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A teacher/student pair and the input it is benchmarked on."""

    teacher: str
    student: str
    input_shape: tuple[int, int, int]
    num_classes: int
    batch: int
    train_size: int  # dataset size given to memory-bank methods (CRD, ...)
    task: str = "classification"  # the kdlab.tasks entry of the pair
    methods: str | None = None  # the default --methods (None: DEFAULT_METHODS)


DEFAULT_METHODS = "ce,kd,fitnet,fcfd:num_paths=1,fcfd:num_paths=2,fcfd:num_paths=4"
#: the detection methods (FCFD App. D has no path sampling)
DETECTION_METHODS = "ce,kd,fitnet,fcfd"
#: the segmentation methods (SKD with and without its critic, CWD, FCFD with |S| = 1 and 2)
SEGMENTATION_METHODS = ("ce,kd,skd:holistic_weight=0,skd,cwd,fcfd:num_paths=1,temperature=1,"
                        "fcfd:num_paths=2,temperature=1")

PRESETS: dict[str, Preset] = {
    # FCFD paper, Table 11 (training cost on CIFAR-100).
    "cifar": Preset("resnet32x4", "resnet8x4", (3, 32, 32), 100, 64, 50_000),
    # Fashion-MNIST-shaped pair, seconds per method on a laptop CPU.
    "cpu": Preset("resnet20", "resnet8", (1, 28, 28), 10, 64, 60_000),
    # The cpu pair on 16x16 images at batch 8: a smoke run of the bench and its scripts.
    "tiny": Preset("resnet14", "resnet8", (1, 16, 16), 10, 8, 20_000),
    # Fashion-MNIST scenes segmentation pair (CPU): 64x64, 11 classes.
    "scenes_seg": Preset("seg_resnet20", "seg_resnet8", (1, 64, 64), 11, 32, 10_000,
                         task="segmentation", methods=SEGMENTATION_METHODS),
    # CIRKD's Cityscapes pair: DeepLabV3-R101 -> DeepLabV3-R18, 512x1024 crops, batch 8 (GPU).
    "cityscapes_seg": Preset("deeplabv3_resnet101", "deeplabv3_resnet18", (3, 512, 1024), 19,
                             8, 2_975, task="segmentation", methods=SEGMENTATION_METHODS),
    # Fashion-MNIST scenes detectors (CPU).
    "scenes_det": Preset("frcnn_tiny_r18", "frcnn_tiny_r10_slim", (1, 64, 64), 10, 16, 60_000,
                         task="detection", methods=DETECTION_METHODS),
    # FCFD paper, Table 3: ResNet-101 -> ResNet-18 Faster R-CNN FPN, batch 8 (GPU).
    "coco_det": Preset("fasterrcnn_resnet101_fpn", "fasterrcnn_resnet18_fpn", (3, 800, 800), 90,
                       8, 117_266, task="detection", methods=DETECTION_METHODS),
}
