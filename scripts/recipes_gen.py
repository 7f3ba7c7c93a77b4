"""Write the benchmark recipes that stand for the FCFD paper's comparison tables.

FCFD (Liu et al., ICLR 2023) compares with other methods in Table 1 (CIFAR-100, ten
teacher -> student pairs) and Table 2 (ImageNet, two pairs); it quotes each method's numbers
from that method's own paper or benchmark. The recipes written here give every such method,
on every pair, the per-pair settings of the implementation behind the quoted number, and
say in their header which repository and file each value comes from:

- KD, CRD, FitNet, VID (and AT, the benchmark's row that Table 1 leaves out) on CIFAR-100:
  the CRD benchmark (HobbitLong/RepDistiller,
  ``train_student.py`` defaults, ``scripts/run_cifar_distill.sh``);
- DKD on CIFAR-100 and ImageNet, KD / AT / CRD / ReviewKD on ImageNet: mdistiller
  (megvii-research/mdistiller, ``configs/cifar100/dkd/*.yaml``, ``configs/imagenet/*/*.yaml``,
  ``mdistiller/engine/cfg.py`` for the defaults a config leaves out);
- ReviewKD on CIFAR-100: the ReviewKD authors (dvlab-research/ReviewKD,
  ``CIFAR-100/script/reviewKD.sh``, ``CIFAR-100/train.py``);
- OFD on ImageNet: the OFD authors (clovaai/overhaul-distillation,
  ``ImageNet/train_with_distillation.py``).

FCFD and SRRL (CIFAR-100 and ImageNet) and the ``ce`` baselines are written by hand (their
headers carry the same kind of source note). The CIFAR-100 pairs also include the CRD
benchmark's resnet110 -> resnet32 and ResNet50 -> vgg8, which kdlab carries for every method.

Usage (from the repository root)::

    python scripts/recipes_gen.py          # (re)write the recipes
    python scripts/recipes_gen.py --check  # exit 1 if a file differs from what it would write

``tests/core/test_recipes.py`` runs the check, so an edited generated recipe or a changed
table here is noticed.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import reproduce_gen  # noqa: E402  (scripts/ is not a package)

# Commits of the references the values were read from.
REPDISTILLER = "HobbitLong/RepDistiller@b84f547"
MDISTILLER = "megvii-research/mdistiller@a08d46f"
REVIEWKD = "dvlab-research/ReviewKD@cede6ea"
OFD = "clovaai/overhaul-distillation@76344a8"


@dataclass(frozen=True)
class Pair:
    """A CIFAR-100 teacher -> student pair with the references' names and per-pair values."""

    student: str
    teacher: str
    rep: tuple[str, str]  # RepDistiller's model names (student, teacher)
    mdistiller_dkd: str | None  # configs/cifar100/dkd/<name>.yaml, None = not published
    dkd_beta: float | None  # that config's DKD.BETA (None: it keeps cfg.py's 8.0)
    review_weight: float | None  # --kd-loss-weight in ReviewKD's script, None = not there
    table1: bool  # a column of FCFD's Table 1

    @property
    def name(self) -> str:
        return f"{self.student}_from_{self.teacher}"

    @property
    def small_lr(self) -> bool:
        """RepDistiller, mdistiller and the FCFD paper use LR 0.01 (not 0.05) for these."""
        return self.student in ("mobilenetv2", "shufflev1", "shufflev2")


PAIRS = [
    Pair("resnet20", "resnet56", ("resnet20", "resnet56"), "res56_res20", 2.0, 0.6, True),
    Pair("resnet32", "resnet110", ("resnet32", "resnet110"), "res110_res32", 2.0, 1.0, False),
    Pair("resnet8x4", "resnet32x4", ("resnet8x4", "resnet32x4"), "res32x4_res8x4", None, 5.0,
         True),
    Pair("vgg8", "vgg13", ("vgg8", "vgg13"), "vgg13_vgg8", 6.0, None, True),
    Pair("wrn_16_2", "wrn_40_2", ("wrn_16_2", "wrn_40_2"), "wrn40_2_wrn_16_2", 6.0, 5.0, True),
    Pair("wrn_40_1", "wrn_40_2", ("wrn_40_1", "wrn_40_2"), "wrn40_2_wrn_40_1", 6.0, 5.0, True),
    Pair("mobilenetv2", "vgg13", ("MobileNetV2", "vgg13"), "vgg13_mv2", 6.0, None, True),
    Pair("mobilenetv2", "resnet50_cifar", ("MobileNetV2", "ResNet50"), "res50_mv2", None, None,
         True),
    Pair("vgg8", "resnet50_cifar", ("vgg8", "ResNet50"), None, None, None, False),
    Pair("shufflev1", "resnet32x4", ("ShuffleV1", "resnet32x4"), "res32x4_shuv1", None, 5.0,
         True),
    Pair("shufflev1", "wrn_40_2", ("ShuffleV1", "wrn_40_2"), "wrn40_2_shuv1", None, 5.0, True),
    Pair("shufflev2", "resnet32x4", ("ShuffleV2", "resnet32x4"), "res32x4_shuv2", None, 8.0,
         True),
]

# ReviewKD's script names its networks its own way.
_REVIEW_NAMES = {"wrn_16_2": "wrn-16-2", "wrn_40_1": "wrn-40-1", "wrn_40_2": "wrn-40-2"}


def _comment(header: list[str]) -> list[str]:
    """The header's pieces joined into one paragraph and wrapped as ``#`` lines."""
    return ["# " + line for line in textwrap.wrap(" ".join(header), width=96)]


def _block(name: str, items: list[tuple[str, str]]) -> list[str]:
    """A YAML mapping section; ``items`` are (key, already formatted value) pairs."""
    return [f"{name}:"] + [f"  {k}: {v}" for k, v in items]


def _cifar_recipe(method: str, pair: Pair, header: list[str], options: list[tuple[str, str]],
                  *, batch: int, lr: float, nesterov: bool = False) -> str:
    out = f"runs/cifar100/{method}/{pair.name}"
    lines = _comment(header)
    lines += [f"# Needs a trained teacher: kdlab train recipes/cifar100/ce/{pair.teacher}.yaml",
              f"# Run: kdlab distill recipes/cifar100/{method}/{pair.name}.yaml",
              "# (written by scripts/recipes_gen.py: change the table there, not this file)"]
    lines += _block("data", [("name", "cifar100"), ("batch_size", str(batch))])
    lines += _block("model", [("student", pair.student), ("teacher", pair.teacher),
                              ("teacher_checkpoint",
                               f"runs/cifar100/ce/{pair.teacher}/best.pt")])
    lines += _block("method", [("name", method), *options])
    optim = [("name", "sgd"), ("lr", f"{lr}"), ("momentum", "0.9"),
             ("weight_decay", "5.0e-4")]
    if nesterov:
        optim.append(("nesterov", "true"))
    lines += _block("optim", optim)
    lines += _block("schedule", [("name", "multistep"), ("epochs", "240"),
                                 ("milestones", "[150, 180, 210]"), ("gamma", "0.1")])
    lines += _block("train", [("out_dir", out)])
    return "\n".join(lines) + "\n"


def _rep_command(pair: Pair, distill: str, flags: str) -> str:
    s, t = pair.rep
    return f"train_student.py --distill {distill} --model_s {s} {flags} (teacher {t})"


def _rep_schedule(pair: Pair) -> str:
    lr = "0.01" if pair.small_lr else "0.05"
    why = " (its rule for MobileNetV2/ShuffleV1/ShuffleV2)" if pair.small_lr else ""
    return (f"SGD LR {lr}{why}, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, "
            "x0.1 at 150/180/210")


# Where kdlab's staged view (the FCFD authors' stage cut) and RepDistiller's feature list
# differ, per network: (affects every stage, note). "every" = also the hint stage (kdlab
# position 3); otherwise only the last stage, which AT and VID pair but FitNet does not.
_CUTS = {
    "vgg8": (True, "a vgg stage ends before its ReLU (RepDistiller's feature is after it)"),
    "vgg13": (True, "a vgg stage ends before its ReLU (RepDistiller's feature is after it)"),
    "shufflev1": (True, "a ShuffleV1 stage ends before its ReLU (RepDistiller's feature is "
                        "after it)"),
    "mobilenetv2": (False, "MobileNetV2's last stage includes conv2 (RepDistiller's f4 is "
                           "before it)"),
    "shufflev2": (False, "ShuffleV2's last stage includes conv2 + BN + ReLU (RepDistiller's f3 "
                         "is before them)"),
    "wrn_16_2": (False, "a WRN's last stage includes the final BN (RepDistiller's f3 is before "
                        "it)"),
    "wrn_40_1": (False, "a WRN's last stage includes the final BN (RepDistiller's f3 is before "
                        "it)"),
    "wrn_40_2": (False, "a WRN's last stage includes the final BN (RepDistiller's f3 is before "
                        "it)"),
}


def _cut_notes(pair: Pair, *, hint_only: bool) -> list[str]:
    """The stage-cut differences that touch the features a method pairs."""
    notes = [note for net in (pair.student, pair.teacher) if net in _CUTS
             for every, note in [_CUTS[net]] if every or not hint_only]
    if not notes:
        return []
    return ["Stage cut: " + "; ".join(dict.fromkeys(notes)) + " (docs/fcfd.md)."]


def _benchmark_recipe(method: str, pair: Pair, header: list[str],
                      options: list[tuple[str, str]]) -> str:
    """A recipe on the CRD benchmark's protocol: batch 64, LR 0.05 (0.01 for the
    MobileNetV2 / ShuffleNet students)."""
    return _cifar_recipe(method, pair, header, options, batch=64,
                         lr=0.01 if pair.small_lr else 0.05)


def kd(pair: Pair) -> str:
    header = [
        f"Hinton KD on CIFAR-100, {pair.teacher} -> {pair.student}: the CRD benchmark's KD row",
        "(FCFD's Table 1 quotes it), CE 0.1 + KL 0.9, tau 4; the FCFD paper's own L_kd keeps",
        "1/1. The frozen teacher in eval mode, as RepDistiller's.",
        f"Source: {REPDISTILLER}, {_rep_command(pair, 'kd', '-r 0.1 -a 0.9 -b 0')}",
        "and its default --kd_T 4;", _rep_schedule(pair) + ".",
    ]
    options = [("temperature", "4.0"), ("ce_weight", "0.1"), ("kd_weight", "0.9")]
    return _benchmark_recipe("kd", pair, header, options)


_CRD_NEGATIVES = [
    "Negatives drawn uniformly from every other sample (negatives: uniform, kdlab's former",
    "default, kept); the authors' loader draws distinct samples of other classes",
    "(negatives: class, the method's default).",
]


def crd(pair: Pair) -> str:
    header = [
        f"CRD (Tian et al., ICLR 2020) on CIFAR-100, {pair.teacher} -> {pair.student}: the CRD",
        "benchmark's CRD row (without KD): CE 1 + CRD 0.8, 128-d embeddings, 16384 negatives,",
        "NCE temperature 0.07, memory momentum 0.5; the loader yields dataset indices (kdlab's",
        "trainer does).",
        f"Source: {REPDISTILLER}, {_rep_command(pair, 'crd', '-r 1 -a 0 -b 0.8')}",
        "and its defaults (--feat_dim 128 --nce_k 16384 --nce_t 0.07 --nce_m 0.5);",
        _rep_schedule(pair) + ".", *_CRD_NEGATIVES,
    ]
    options = [("weight", "0.8"), ("ce_weight", "1.0"), ("feat_dim", "128"),
               ("num_negatives", "16384"), ("temperature", "0.07"), ("momentum", "0.5"),
               ("negatives", "uniform")]
    return _benchmark_recipe("crd", pair, header, options)


def fitnet(pair: Pair) -> str:
    header = [
        f"FitNet (Romero et al., ICLR 2015) on CIFAR-100, {pair.teacher} -> {pair.student}, as",
        "the CRD benchmark runs it: CE 1 + 100 x MSE hint, trained jointly (no hint stage),",
        "at hint_layer=2 (the second stage after the stem; kdlab position 3) through the",
        "benchmark's ConvReg (conv + BN + ReLU).",
        f"Source: {REPDISTILLER}, {_rep_command(pair, 'hint', '-r 1 -a 0 -b 100')}",
        "and its default --hint_layer 2;",
        _rep_schedule(pair) + ".",
    ]
    header += _cut_notes(pair, hint_only=True)
    options = [("ce_weight", "1.0"), ("hint_weight", "100.0"),
               ("position", "3  # the benchmark's hint_layer=2"),
               ("regressor", "convreg  # the benchmark's ConvReg")]
    return _benchmark_recipe("fitnet", pair, header, options)


def at(pair: Pair) -> str:
    header = [
        f"AT (Zagoruyko & Komodakis, ICLR 2017) on CIFAR-100, {pair.teacher} -> {pair.student},",
        "the CRD benchmark's AT row (not a column of FCFD's Table 1; kept for the benchmark):",
        "CE 1 + 1000 x attention loss summed over the stage pairs after the stem (RepDistiller's",
        "feat[1:-1]), p 2, the larger map average-pooled to the smaller.",
        f"Source: {REPDISTILLER}, {_rep_command(pair, 'attention', '-r 1 -a 0 -b 1000')}",
        "(distiller_zoo/AT.py: p 2);", _rep_schedule(pair) + ".",
    ]
    header += _cut_notes(pair, hint_only=False)
    options = [("beta", "1000.0"), ("p", "2.0"), ("ce_weight", "1.0")]
    return _benchmark_recipe("at", pair, header, options)


def vid(pair: Pair) -> str:
    header = [
        f"VID (Ahn et al., CVPR 2019) on CIFAR-100, {pair.teacher} -> {pair.student}, the CRD",
        "benchmark's VID row: CE 1 + VID 1 on every stage pair after the stem (RepDistiller's",
        "feat[1:-1]), 1x1-conv regressors with learned per-channel variance (initial 5).",
        f"Source: {REPDISTILLER}, {_rep_command(pair, 'vid', '-r 1 -a 0 -b 1')}",
        "(VIDLoss(..., init_pred_var=5.0, eps=1e-5) in distiller_zoo/VID.py);",
        _rep_schedule(pair) + ".",
    ]
    header += _cut_notes(pair, hint_only=False)
    options = [("weight", "1.0"), ("ce_weight", "1.0"), ("init_variance", "5.0")]
    return _benchmark_recipe("vid", pair, header, options)


def reviewkd(pair: Pair) -> str:
    s = _REVIEW_NAMES.get(pair.student, pair.student)
    t = _REVIEW_NAMES.get(pair.teacher, pair.teacher)
    lr = 0.02 if pair.small_lr else 0.1
    header = [
        f"ReviewKD (Chen et al., CVPR 2021) on CIFAR-100, {pair.teacher} -> {pair.student}:",
        "CE 1 + review (ABF + HCL) loss, its weight ramped up over the first 20 epochs.",
    ]
    if pair.review_weight is not None:
        weight = pair.review_weight
        header.append(f"Source: {REVIEWKD}, CIFAR-100/script/reviewKD.sh: --model {s} "
                      f"--teacher {t} --kd-loss-weight {weight:g};")
    else:
        weight = 5.0
        header += [f"Source: {REVIEWKD}: CIFAR-100/script/reviewKD.sh has no line for this",
                   "pair (not published); weight 5 is the one it uses for most pairs (and",
                   "mdistiller's configs/cifar100/reviewkd.yaml);"]
    header += [
        f"CIFAR-100/train.py: batch 128, SGD LR {lr:g} (0.02 for shuffle/mobile students),",
        "Nesterov momentum 0.9, weight decay 5e-4, 240 epochs x0.1 at 150/180/210,",
        "--kd-warm-up 20. The teacher's stage outputs are reviewed as the staged view gives",
        "them (teacher_features: stage_outputs, post-ReLU on ResNets, kdlab's former default,",
        "kept); the authors review its pre-ReLU features (teacher_features: pre_relu, the",
        "method's default).",
    ]
    options = [("weight", f"{weight}"), ("ce_weight", "1.0"), ("warmup_epochs", "20"),
               ("teacher_features", "stage_outputs")]
    return _cifar_recipe("reviewkd", pair, header, options, batch=128, lr=lr, nesterov=True)


def dkd(pair: Pair) -> str:
    lr = 0.01 if pair.small_lr else 0.05
    beta = pair.dkd_beta if pair.dkd_beta is not None else 8.0
    header = [
        f"Decoupled KD (Zhao et al., CVPR 2022) on CIFAR-100, {pair.teacher} -> {pair.student}:",
        f"CE 1 + warm-up(20 epochs) x (alpha TCKD + beta NCKD), alpha 1, beta {beta:g}, tau 4.",
    ]
    if pair.mdistiller_dkd is None:
        header += [f"Source: {MDISTILLER} has no configs/cifar100/dkd/ file for this pair (nor",
                   "the DKD paper a number); mdistiller's defaults (mdistiller/engine/cfg.py:",
                   "DKD.BETA 8.0, T 4, WARMUP 20) and the CRD benchmark's LR."]
    else:
        where = ("BETA" if pair.dkd_beta is not None
                 else "no BETA, so cfg.py's DKD.BETA 8.0")
        header.append(f"Source: {MDISTILLER}, configs/cifar100/dkd/{pair.mdistiller_dkd}.yaml "
                      f"({where};")
        header.append("alpha, T and warm-up from mdistiller/engine/cfg.py).")
    header.append(f"SGD LR {lr:g}, momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, "
                  "x0.1 at 150/180/210.")
    options = [("alpha", "1.0"), ("beta", f"{beta}"), ("temperature", "4.0"),
               ("ce_weight", "1.0"), ("warmup", "20")]
    return _cifar_recipe("dkd", pair, header, options, batch=64, lr=lr)


CIFAR_METHODS = {"kd": kd, "crd": crd, "fitnet": fitnet, "vid": vid, "reviewkd": reviewkd,
                 "dkd": dkd, "at": at}


# --- ImageNet (FCFD Table 2) -------------------------------------------------------------

@dataclass(frozen=True)
class ImageNetPair:
    student: str
    teacher: str
    mdistiller: str  # configs/imagenet/<dir>/
    download: str  # torchvision's file for the teacher's IMAGENET1K_V1 weights

    @property
    def name(self) -> str:
        return f"{self.student}_from_{self.teacher}"


IMAGENET_PAIRS = [
    ImageNetPair("resnet18", "resnet34", "r34_r18", "resnet34-b627a593.pth"),
    ImageNetPair("mobilenet_v1", "resnet50", "r50_mv1", "resnet50-0676ba61.pth"),
]

_MDISTILLER_STEPS = ("mdistiller's ImageNet configs leave SOLVER.LR_DECAY_STAGES at cfg.py's "
                     "CIFAR", "default (150/180/210, no decay within 100 epochs); the recipe "
                     "decays x0.1 at", "30/60/90 as the DKD and FCFD papers' ImageNet protocol.")


def _imagenet_recipe(method: str, pair: ImageNetPair, header: list[str],
                     options: list[tuple[str, str]], *, batch: int, lr: float,
                     nesterov: bool = False) -> str:
    lines = _comment(header)
    lines += [
        f"# The teacher is torchvision's pretrained {pair.teacher} (IMAGENET1K_V1), as in the "
        "references.",
        f"# Offline: download https://download.pytorch.org/models/{pair.download} elsewhere "
        "and pass",
        f"#   --set model.teacher_pretrained=/path/to/{pair.download}",
        f"# Run: kdlab distill recipes/imagenet/{method}/{pair.name}.yaml "
        "--set data.root=/path/to/imagenet",
        "# (written by scripts/recipes_gen.py: change the table there, not this file)",
    ]
    lines += _block("data", [("name", "imagenet"), ("batch_size", str(batch))])
    lines += _block("model", [("student", pair.student), ("teacher", pair.teacher),
                              ("teacher_pretrained",
                               "true  # torchvision's weights (a download), or a local .pth")])
    lines += _block("method", [("name", method), *options])
    optim = [("name", "sgd"), ("lr", f"{lr}"), ("momentum", "0.9"),
             ("weight_decay", "1.0e-4")]
    if nesterov:
        optim.append(("nesterov", "true"))
    lines += _block("optim", optim)
    lines += _block("schedule", [("name", "multistep"), ("epochs", "100"),
                                 ("milestones", "[30, 60, 90]"), ("gamma", "0.1")])
    lines += _block("train", [("amp", "fp16  # mixed precision for speed, as FCFD's runs"),
                              ("out_dir", f"runs/imagenet/{method}/{pair.name}")])
    return "\n".join(lines) + "\n"


def _md(pair: ImageNetPair, method: str) -> str:
    return f"{MDISTILLER}, configs/imagenet/{pair.mdistiller}/{method}.yaml"


def imagenet_kd(pair: ImageNetPair) -> str:
    header = [
        f"Hinton KD on ImageNet, {pair.teacher} -> {pair.student} (FCFD's Table 2 KD row):",
        "CE 0.5 + KL 0.5, tau 1; SGD LR 0.2, momentum 0.9, weight decay 1e-4, batch 512,",
        "100 epochs.",
        f"Source: {_md(pair, 'kd')}.", *_MDISTILLER_STEPS,
    ]
    options = [("temperature", "1.0"), ("ce_weight", "0.5"), ("kd_weight", "0.5")]
    return _imagenet_recipe("kd", pair, header, options, batch=512, lr=0.2)


def imagenet_dkd(pair: ImageNetPair) -> str:
    beta = 0.5 if pair.mdistiller == "r34_r18" else 2.0
    header = [
        f"Decoupled KD on ImageNet, {pair.teacher} -> {pair.student} (FCFD's Table 2 DKD row):",
        f"CE 1 + warm-up(1 epoch) x (alpha TCKD + beta NCKD), alpha 1, beta {beta:g}, tau 1;",
        "SGD LR 0.2, momentum 0.9, weight decay 1e-4, batch 512, 100 epochs.",
        f"Source: {_md(pair, 'dkd')} (alpha: cfg.py's DKD.ALPHA 1.0).", *_MDISTILLER_STEPS,
    ]
    options = [("alpha", "1.0"), ("beta", f"{beta}"), ("temperature", "1.0"),
               ("ce_weight", "1.0"), ("warmup", "1")]
    return _imagenet_recipe("dkd", pair, header, options, batch=512, lr=0.2)


def imagenet_at(pair: ImageNetPair) -> str:
    header = [
        f"AT (Zagoruyko & Komodakis, ICLR 2017) on ImageNet, {pair.teacher} -> {pair.student}",
        "(FCFD's Table 2 AT row): CE 1 + 1000 x attention loss summed over the stage pairs",
        "after the stem, p 2; SGD LR 0.2, momentum 0.9, weight decay 1e-4, batch 512, 100",
        "epochs.",
        f"Source: {_md(pair, 'at')} (AT.P 2, AT.LOSS.FEAT_WEIGHT 1000 from cfg.py).",
        *_MDISTILLER_STEPS,
    ]
    options = [("beta", "1000.0"), ("p", "2.0"), ("ce_weight", "1.0")]
    return _imagenet_recipe("at", pair, header, options, batch=512, lr=0.2)


def imagenet_crd(pair: ImageNetPair) -> str:
    header = [
        f"CRD (Tian et al., ICLR 2020) on ImageNet, {pair.teacher} -> {pair.student} (FCFD's",
        "Table 2 CRD row): CE 1 + CRD 0.8, 128-d embeddings, 16384 negatives, NCE temperature",
        "0.07, memory momentum 0.5 (banks over the 1.28M training images); SGD LR 0.1,",
        "momentum 0.9, weight decay 1e-4, batch 256, 100 epochs.",
        f"Source: {_md(pair, 'crd')} (CRD.* from cfg.py).", *_MDISTILLER_STEPS,
        *_CRD_NEGATIVES,
    ]
    options = [("weight", "0.8"), ("ce_weight", "1.0"), ("feat_dim", "128"),
               ("num_negatives", "16384"), ("temperature", "0.07"), ("momentum", "0.5"),
               ("negatives", "uniform")]
    return _imagenet_recipe("crd", pair, header, options, batch=256, lr=0.1)


def imagenet_reviewkd(pair: ImageNetPair) -> str:
    weight, mid = (1.0, None) if pair.mdistiller == "r34_r18" else (8.0, 256)
    header = [
        f"ReviewKD on ImageNet, {pair.teacher} -> {pair.student} (FCFD's Table 2 Review row):",
        f"CE 1 + {weight:g} x review loss, ramped up over the first epoch"
        + (f", ABF width {mid}" if mid else "") + ";",
        "SGD LR 0.1, momentum 0.9, weight decay 1e-4, batch 256, 100 epochs.",
        f"Source: {_md(pair, 'reviewkd')}. mdistiller reviews the student's and the",
        "teacher's pre-ReLU features (STU_PREACT, preact_feats), this recipe both networks'",
        "stage outputs (teacher_features: stage_outputs, kdlab's former default, kept;",
        "pre_relu is the method's default).", *_MDISTILLER_STEPS,
    ]
    options = [("weight", f"{weight}"), ("ce_weight", "1.0"), ("warmup_epochs", "1"),
               ("teacher_features", "stage_outputs")]
    if mid:
        options.append(("mid_channels", f"{mid}  # MAX_MID_CHANNEL"))
    return _imagenet_recipe("reviewkd", pair, header, options, batch=256, lr=0.1)


def imagenet_ofd(pair: ImageNetPair) -> str:
    header = [
        f"OFD (Heo et al., ICCV 2019) on ImageNet, {pair.teacher} -> {pair.student} (FCFD's",
        "Table 2 OFD row): margin ReLU on the teacher's pre-ReLU features, partial L2, 1x1",
        "conv + BN connectors; CE 1 + distillation loss / batch / 10000 (weight 1e-4); the",
        "frozen teacher's BN on batch statistics, as the authors' train-mode teacher.",
        f"Source: {OFD}, ImageNet/train_with_distillation.py",
        "and ImageNet/README.md: batch 256, SGD LR 0.1 x0.1 every 30 epochs, Nesterov",
        "momentum 0.9, weight decay 1e-4, 100 epochs.",
    ]
    if pair.teacher == "resnet34":
        header.append("The authors publish ResNet50 -> MobileNet, not this pair (nor does "
                      "mdistiller): their settings unchanged.")
    else:
        header.append(f"({MDISTILLER}, configs/imagenet/r50_mv1/ofd.yaml: the same weight at "
                      "batch 128, LR 0.05.)")
    options = [("weight", "1.0e-4"), ("ce_weight", "1.0"), ("teacher_bn", "batch")]
    return _imagenet_recipe("ofd", pair, header, options, batch=256, lr=0.1, nesterov=True)


IMAGENET_METHODS = {"kd": imagenet_kd, "dkd": imagenet_dkd, "at": imagenet_at,
                    "crd": imagenet_crd, "reviewkd": imagenet_reviewkd, "ofd": imagenet_ofd}


def recipes() -> dict[Path, str]:
    """``{path relative to the repository: text}`` for every recipe this script owns."""
    out: dict[Path, str] = {}
    for method, make in CIFAR_METHODS.items():
        for pair in PAIRS:
            out[Path("recipes", "cifar100", method, f"{pair.name}.yaml")] = make(pair)
    for method, make in IMAGENET_METHODS.items():
        for ipair in IMAGENET_PAIRS:
            out[Path("recipes", "imagenet", method, f"{ipair.name}.yaml")] = make(ipair)
    return out


def stale(root: Path = ROOT) -> list[Path]:
    """The owned recipes whose file is missing or differs from what would be written."""
    return [p for p, text in recipes().items()
            if not (root / p).is_file() or (root / p).read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report differing files")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale()
        for p in bad:
            print(f"out of date: {p}")
        return 1 if bad or reproduce_gen.main(["--check"]) else 0
    for p, text in recipes().items():
        (ROOT / p).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / p).write_text(text, encoding="utf-8")
    print(f"wrote {len(recipes())} recipes")
    return reproduce_gen.main([])  # docs/reproduce.md, from every recipe's header


if __name__ == "__main__":
    sys.exit(main())
