"""The reference code's training settings for the recipes that stand for a published number,
value by value, each with the file (and line) and commit it comes from.

``tests/core/test_reference_values.py`` compares every recipe named here with these values;
a value the recipe does not match must be listed in ``DIFFERS`` (with the reason) and named in
the recipe header's ``Differs:`` paragraph, so that no difference stays silent.
``scripts/reproduce_gen.py`` reads the table to mark those recipes' parity level in
docs/reproduce.md. Keys are the recipe's dotted settings (``optim.lr``, ``method.temperature``,
``model.student_options.input_format``).
"""

from __future__ import annotations

from typing import Any

FCFD = "LiuDongyang6/FCFD @ 2aefb7bc74ed81185c13e3fee350d36a9db8d250"
REVIEWKD = "dvlab-research/ReviewKD @ cede6ea6387ae9b6127de0e561507177bf19c11e"
D2 = "facebookresearch/detectron2 v0.6 @ d1e04565d3bec8719335b88be9e9b961bf3ec464"
SRRL = "jingyang2017/KD_SRRL @ d2e802f5f57efd4f5bc6326a697b48236008a5b6"

#: (value, where) per setting; one entry per reference configuration
Values = dict[str, tuple[Any, str]]


def _d2_solver(cfg: str, batch_line: int, lr_line: int) -> Values:
    """A Detectron2 config's solver: its batch, LR, iterations and steps (``lr_line`` and the
    lines after it), the rest Detectron2's defaults (DefaultTrainer's SGD)."""
    return {
        "data.batch_size": (8, f"{cfg}:{batch_line} (SOLVER.IMS_PER_BATCH)"),
        "optim.name": ("sgd", f"{D2}, solver/build.py:114-131 (torch.optim.SGD)"),
        "optim.lr": (0.01, f"{cfg}:{lr_line} (SOLVER.BASE_LR)"),
        "optim.momentum": (0.9, f"{D2}, config/defaults.py:521 (SOLVER.MOMENTUM)"),
        "optim.nesterov": (False, f"{D2}, config/defaults.py:523 (SOLVER.NESTEROV)"),
        "optim.weight_decay": (1e-4, f"{D2}, config/defaults.py:525 (SOLVER.WEIGHT_DECAY)"),
        "optim.weight_decay_norm": (0.0, f"{D2}, config/defaults.py:528 "
                                         "(SOLVER.WEIGHT_DECAY_NORM)"),
        "schedule.gamma": (0.1, f"{D2}, config/defaults.py:530 (SOLVER.GAMMA)"),
        "schedule.iterations": (180000, f"{cfg}:{lr_line + 1} (SOLVER.MAX_ITER)"),
        "schedule.milestones": ([120000, 160000], f"{cfg}:{lr_line + 2}-{lr_line + 4} "
                                                   "(SOLVER.STEPS, iterations)"),
        "schedule.warmup_iters": (1000, f"{D2}, config/defaults.py:535 (SOLVER.WARMUP_ITERS)"),
        "schedule.warmup_factor": (0.001, f"{D2}, config/defaults.py:534 "
                                          "(SOLVER.WARMUP_FACTOR)"),
    }


def _fcfd_detection(config: str, batch_line: int, lr_line: int, amp_line: int,
                    roil2_line: int) -> Values:
    """An FCFD detection config (its solver lines) over Detectron2's defaults."""
    cfg = f"{FCFD}, detection/configs/{config}"
    return {
        **_d2_solver(cfg, batch_line, lr_line),
        "train.amp": ("fp16", f"{cfg}:{amp_line}-{amp_line + 1} (SOLVER.AMP.ENABLED)"),
        "method.temperature": (1.0, f"{FCFD}, detection/model/config.py:20 (T)"),
        "method.app_weight": (1.0, f"{FCFD}, detection/model/config.py:21 (APP_WEIGHT)"),
        **{f"method.{k}_weight": (1.0, f"{FCFD}, detection/model/config.py:22 (KD_WEIGHT)")
           for k in ("func_kl", "funcp_kl", "kd")},
        **{f"method.{k}_weight": (1.0, f"{cfg}:{roil2_line} (ROIL2_WEIGHT)")
           for k in ("func_l2", "funcp_l2", "kd_l2")},
        "method.reduction": ("mean", f"{FCFD}, detection/model/rcnn.py:29-37 "
                                     "(batchmean KL, F.mse_loss)"),
    }


#: where each distillation code base sets its teacher's Detectron2 options (its
#: ``add_teacher_cfg``) and reverses an RGB student's image for a BGR teacher
_TEACHER_CFG = {
    FCFD: ("detection", {"format": 89, "mean": 49, "std": 53, "stride": 504,
                         "pool": "309-311", "offset": 198}, "rcnn.py:312-321"),
    REVIEWKD: ("Detection", {"format": 81, "mean": 41, "std": 45, "stride": 485,
                             "pool": "301-303", "offset": 190}, "rcnn.py:259-266"),
}


def _d2_network(role: str, config: str, kind: str, code: str = FCFD) -> Values:
    """The pixel format and Detectron2 parts of one network of a detection config of
    ``code`` (FCFD's or ReviewKD's; ``role``: student | teacher; ``kind``: msra (a
    ResNet-50/101 from MSRA or the model zoo), r18 or mv2), as the model options of kdlab's
    detector."""
    key = f"model.{role}_options."
    d2 = f"{D2}, config/defaults.py"
    folder, teacher_lines, reverse = _TEACHER_CFG[code]
    code_cfg = f"{code}, {folder}/model/config.py"
    where = d2 if role == "student" else code_cfg
    lines = {"format": 84, "mean": 42, "std": 46, "stride": 488, "pool": "304-306",
             "offset": 193} if role == "student" else teacher_lines
    out: Values = {
        f"{key}input_format": ("bgr", f"{where}:{lines['format']} (INPUT.FORMAT)"),
        f"{key}pixel_mean": ([103.530, 116.280, 123.675],
                             f"{where}:{lines['mean']} (MODEL.PIXEL_MEAN)"),
        f"{key}pixel_std": ([1.0, 1.0, 1.0], f"{where}:{lines['std']} (MODEL.PIXEL_STD)"),
        f"{key}box_pooler": ("roialignv2", f"{where}:{lines['pool']} (ROI_BOX_HEAD.POOLER_TYPE "
                                           "ROIAlignV2, POOLER_SAMPLING_RATIO 0)"),
        f"{key}anchors": ("detectron2", f"{where}:{lines['offset']} (ANCHOR_GENERATOR.OFFSET 0; "
                                        f"{D2}, modeling/anchor_generator.py "
                                        "generate_cell_anchors, unrounded)"),
    }
    if role == "student":  # the trained network: Detectron2's losses (no config overrides them)
        out[f"{key}losses"] = ("detectron2", f"{d2}:228, 302 (RPN / ROI_BOX_HEAD.SMOOTH_L1_BETA "
                                             f"0.0: L1); {D2}, modeling/proposal_generator/rpn.py:"
                                             "421-427 (RPN losses / BATCH_SIZE_PER_IMAGE x "
                                             "images), modeling/roi_heads/fast_rcnn.py:382 (box "
                                             "loss / sampled ROIs)")
    if kind != "r18" and kind != "mv2":
        out[f"{key}stride_in_1x1"] = (True, f"{where}:{lines['stride']} "
                                            "(RESNETS.STRIDE_IN_1X1)")
    cfg = f"{code}, {folder}/configs/{config}"
    if kind == "mv2" and role == "student":
        out[f"{key}fpn_taps"] = ("last", f"{code}, {folder}/model/backbone/mobilenetv2.py:119-"
                                         f"127 (m2..m5: last block of each stride); {cfg}:9")
    if kind == "r18" and role == "student":
        out[f"{key}input_format"] = ("rgb", f"{cfg}:4 (INPUT.FORMAT)")
        out[f"{key}pixel_std"] = ([57.375, 57.120, 58.395], f"{cfg}:6 (MODEL.PIXEL_STD)")
    if kind == "r18" and role == "teacher":  # normalised in the student's RGB order, reversed
        out[f"{key}pixel_mean"] = ([123.675, 116.280, 103.530],
                                   f"{code_cfg}:{lines['mean']} (TEACHER.MODEL.PIXEL_MEAN) "
                                   f"subtracted from the RGB image, then reversed to BGR: "
                                   f"{code}, {folder}/model/{reverse}")
    return out


#: the teachers: Detectron2 model-zoo detectors (ReviewKD's release files that the FCFD configs
#: load hold "Detectron2's pretrained detector": dvlab-research/ReviewKD @ cede6ea
#: Detection/README.md); kdlab reads the model-zoo file of that depth (MODEL_ZOO.md)
ZOO_R101 = ("pretrained/model_final_f6e8b1.pkl",
            f"{D2}, MODEL_ZOO.md:189 (faster_rcnn_R_101_FPN_3x)")
ZOO_R50 = ("pretrained/model_final_280758.pkl",
           f"{D2}, MODEL_ZOO.md:159 (faster_rcnn_R_50_FPN_3x)")


def _fcfd_networks(config: str, student: str, teacher_file: tuple[str, str],
                   code: str = FCFD) -> Values:
    """Both networks of an FCFD (or ReviewKD) detection config: pixel formats, parts,
    teacher file."""
    return {**_d2_network("student", config, student, code),
            **_d2_network("teacher", config, "r18" if student == "r18" else "msra", code),
            "model.teacher_pretrained": teacher_file}


def _reviewkd_detection(config: str, weight: float, weight_line: int,
                        batch_line: int) -> Values:
    """A ReviewKD detection config (its KD and solver lines) over Detectron2's defaults: the
    authors' ``ReviewKD`` meta-architecture with ``build_kd_trans`` and ``hcl``."""
    cfg = f"{REVIEWKD}, Detection/configs/{config}"
    model = f"{REVIEWKD}, Detection/model"
    return {
        **_d2_solver(cfg, batch_line, batch_line + 1),
        "train.amp": ("none", f"{D2}, config/defaults.py:578 (SOLVER.AMP.ENABLED False; "
                              f"{config} and Base-Distillation.yaml leave it)"),
        "method.weight": (weight, f"{cfg}:{weight_line} (KD.REVIEWKD_LOSS_WEIGHT)"),
        "method.ce_weight": (1.0, f"{model}/rcnn.py:201-203 (the detector's losses, "
                                  "unweighted)"),
        "method.warmup_epochs": (0, f"{model}/rcnn.py:185 (the loss from the first "
                                    "iteration)"),
        "method.mid_channels": (256, f"{model}/kd_trans.py:71 (mid_channel)"),
        "method.hcl_levels": ([4, 2, 1], f"{model}/kd_trans.py:82 (for l in [4,2,1])"),
    }


def _srrl(teacher: str) -> Values:
    script = f"{SRRL}, train_imagenet_distillation.py"
    return {
        "data.batch_size": (512, f"{script}:18"),
        "optim.lr": (0.2, f"{script}:16"),
        "optim.momentum": (0.9, f"{script}:14"),
        "optim.weight_decay": (1e-4, f"{script}:19"),
        "optim.nesterov": (False, f"{script}:56"),
        "schedule.name": ("multistep", f"{script}:60 (lr_step_policy)"),
        "schedule.epochs": (100, f"{script}:17"),
        "schedule.milestones": ([30, 60, 90], f"{script}:60"),
        "schedule.gamma": (0.1, f"{script}:60"),
        "train.amp": ("none", f"{script} (no autocast or GradScaler in the repository: fp32)"),
        "model.teacher": (teacher, f"{SRRL}, models/official_resnet.py:233-243"),
        "method.ce_weight": (1.0, f"{script}:115-120"),
        "method.fm_weight": (1.0, f"{script}:115-120 (statm_loss, weight 1)"),
        "method.sr_weight": (1.0, f"{script}:23, 115-120 (args.weight 1)"),
    }


COCO_FCFD = "recipes/coco/fcfd/"
COCO_REVIEWKD = "recipes/coco/reviewkd/"
#: recipe path -> the reference's values
REFERENCE: dict[str, Values] = {
    f"{COCO_FCFD}fasterrcnn_resnet18_fpn_from_fasterrcnn_resnet101_fpn.yaml": {
        **_fcfd_detection("FCFD-R18-R101.yaml", 33, 34, 31, 28),
        **_fcfd_networks("FCFD-R18-R101.yaml", "r18", ZOO_R101)},
    f"{COCO_FCFD}fasterrcnn_resnet50_fpn_from_fasterrcnn_resnet101_fpn.yaml": {
        **_fcfd_detection("FCFD-R50-R101.yaml", 29, 30, 27, 24),
        **_fcfd_networks("FCFD-R50-R101.yaml", "msra", ZOO_R101)},
    f"{COCO_FCFD}fasterrcnn_mobilenet_v2_fpn_from_fasterrcnn_resnet50_fpn.yaml": {
        **_fcfd_detection("FCFD-MV2-R50.yaml", 30, 31, 28, 25),
        **_fcfd_networks("FCFD-MV2-R50.yaml", "mv2", ZOO_R50)},
    "recipes/coco/fcfd_inherit/fasterrcnn_resnet50_fpn_from_fasterrcnn_resnet101_fpn.yaml": {
        **_fcfd_detection("FCFD-R50-R101-INHERIT.yaml", 30, 31, 28, 25),
        **_fcfd_networks("FCFD-R50-R101-INHERIT.yaml", "msra", ZOO_R101)},
    f"{COCO_REVIEWKD}fasterrcnn_resnet18_fpn_from_fasterrcnn_resnet101_fpn.yaml": {
        **_reviewkd_detection("ReviewKD-R18-R101.yaml", 1.2, 27, 30),
        **_fcfd_networks("ReviewKD-R18-R101.yaml", "r18", ZOO_R101, REVIEWKD)},
    f"{COCO_REVIEWKD}fasterrcnn_resnet50_fpn_from_fasterrcnn_resnet101_fpn.yaml": {
        **_reviewkd_detection("ReviewKD-R50-R101.yaml", 1.0, 23, 26),
        **_fcfd_networks("ReviewKD-R50-R101.yaml", "msra", ZOO_R101, REVIEWKD)},
    f"{COCO_REVIEWKD}fasterrcnn_mobilenet_v2_fpn_from_fasterrcnn_resnet50_fpn.yaml": {
        **_reviewkd_detection("ReviewKD-MV2-R50.yaml", 2.0, 24, 27),
        **_fcfd_networks("ReviewKD-MV2-R50.yaml", "mv2", ZOO_R50, REVIEWKD)},
    "recipes/imagenet/srrl/resnet18_from_resnet34.yaml": _srrl("resnet34"),
    "recipes/imagenet/srrl/mobilenet_v1_from_resnet50.yaml": _srrl("resnet50"),
}

_MV2_INPUT = ("the student's MobileNetV2 starts from torchvision's ImageNet weights, which read "
              "RGB with ImageNet mean / std; the authors' MobileNetV2 file (inside "
              "mv2-r50.pth) is not documented")
#: recipe path -> {setting: why the recipe differs}; the recipe header names each setting
DIFFERS: dict[str, dict[str, str]] = {
    f"{folder}fasterrcnn_mobilenet_v2_fpn_from_fasterrcnn_resnet50_fpn.yaml": {
        f"model.student_options.{k}": _MV2_INPUT
        for k in ("input_format", "pixel_mean", "pixel_std")}
    for folder in (COCO_FCFD, COCO_REVIEWKD)
}
