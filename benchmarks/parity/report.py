"""Render ``benchmarks/results/parity.md`` from the parity fixtures (``tests/fixtures/parity``).

    python benchmarks/parity/report.py [--out benchmarks/results/parity.md]

The first table lists every term of every method checked against a reference: kdlab's
value, the reference's, their relative difference and, for an intentional difference, its
reason. The second lists the trajectory (step-exact) fixtures (``tests/fixtures/parity/
trajectory``): per case the reference loop, the steps, the largest relative differences of
the loss terms and of the weight digests, and the settings the case runs with; the third the
segmentation and detection trajectories (``trajectory_cirkd``, ``trajectory_detection``).
The fixed text around the tables (what is not covered, the deviations fixed) lives here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity_setup as P  # noqa: E402
import trajectory_setup as TS  # noqa: E402

NAMES = {"repdistiller": "RepDistiller (CRD benchmark)", "mdistiller": "mdistiller",
         "kdzoo": "Knowledge-Distillation-Zoo", "fcfd": "FCFD authors",
         "srrl": "SRRL authors", "simkd": "SimKD authors", "frskd": "FRSKD authors"}

HEADER = """# Reference parity

kdlab's loss terms against the reference implementations' own code, on the real CIFAR-100
networks (resnet32x4 -> resnet8x4 and the cross-architecture vgg13 -> mobilenetv2), with
every weight copied from kdlab's models and method modules into the reference's, one fixed
batch of 4 images, float64. Each method runs with its CIFAR-100 recipe's options (the
method's defaults where the pair has no recipe), so stage selection, bridges and loss
weights are checked together with the formulas. CI (`tests/methods/test_parity.py`) holds kdlab to
these numbers at a relative 1e-5; a term that differs on purpose is held to kdlab's own
recorded value instead, so neither side can move unnoticed.

- fixtures: `tests/fixtures/parity/<pair>.json` (seeds, references and commits, values)
- produced by: `{command}`
  (`benchmarks/parity/generate.py`; this page: `python benchmarks/parity/report.py`)
- seeds: {seeds}; networks from kdlab's zoo, BatchNorm parameters and statistics drawn
  from the seed (so eval-mode teachers and OFD's margins are not trivial; the values are
  large because the networks are untrained)
- CRD: a {crd_size}-sample memory with {crd_k} negatives (the recipe's 16384 need a
  50000-sample bank; the formula does not depend on the size), the same negative rows on
  both sides; ReviewKD: the reference's pre-ReLU teacher features (`teacher_features:
  pre_relu`, the default; the recipes keep kdlab's former `stage_outputs`)
- FCFD: every candidate path at once (the recipe samples 2 per step; both sides are given
  the same paths); the authors' training loop reports the L2 terms as one number, kdlab
  as `app` and `func_l2`, so the table compares their sum
- SimKD: the authors' `SimKD` module and networks, called as their training loop
  (`feat[-2]` of both, the teacher's classifier reused, MSE weight 1, no CE); kdlab's logits
  (its composite student) are also checked against their prediction (not a stored term)
- FRSKD, FRSKD+SLA: self-distillation, so only the pair's student is used; the authors'
  `BiFPNc`, `Attention` and `SLALoss` (`--aux sla`, every CE and KL it sums read one by
  one) on RepDistiller's student network (the authors' zoo has neither resnet8x4 nor
  mobilenetv2), handed the stage outputs as kdlab's zoo cuts them

Methods without a fixture here, and what holds them instead: `ce` (the label loss alone) and
`combo` (a sum of the parts above, tested equal to them); `dml` and `online_fcfd` (the teacher
trains, so there is no frozen pair to copy; their terms are tested against direct
computations of the papers' formulas, and online FCFD's pooled L2 against the authors' ReLU +
pool); `skd` and `cwd` (segmentation; SKD's one step is tested equal to its authors'
alternating student / critic steps in `tests/methods/test_seg_methods.py`, CWD against the paper's
formula).

References:

{refs}
"""

FOOTER = """
## Intentional differences

{reasons}

ReviewKD runs with `teacher_features: pre_relu` (the method's default; the CIFAR-100
recipes keep kdlab's former `stage_outputs`): mdistiller's and the authors' CIFAR code
compare with the teacher's pre-ReLU features, and so kdlab's value equals theirs. With
`stage_outputs` (post-ReLU) the reference's value, its targets replaced by the post-ReLU
stage outputs (a one-off check by hand), equals kdlab's exactly: only the choice of teacher
feature differs. `STAGE_CUT`-type differences likewise come from which tensor is compared,
not from the loss code: on resnet32x4 -> resnet8x4, where the stage outputs are the same
tensors, those methods match.

FRSKD+SLA on mobilenetv2: handed the last stage after its ReLU instead (what the authors' own
networks return; a one-off check by hand, not part of the fixtures), the authors' code gives
kdlab's `joint_ce`, `sla_sd` and `kd` to 1e-13 (and then differs in `feat`, which kdlab takes
on the stage output as cut): the joint heads, aggregation and the SLA terms agree; only which
tensor the student's joint head pools differs.

## Not covered (yet)

- SimKD on the cross-architecture pair: it projects `feat[-2]`, which the SimKD authors'
  mobilenetv2 gives before conv2 (160 channels) where the zoo's last stage includes it
  (1280): the projectors differ in shape, nothing to copy.
- FRSKD's gradient flow (which parameters each term trains) is not a loss value: it is
  tested against the authors' loop in `tests/methods/frskd/test_frskd.py` and
  `tests/methods/frskd/test_frskd_sla.py`, and step by step in the trajectory fixtures.
- Trajectories: OFD and IRG (loss-exact only); CRD against mdistiller's loop, not
  RepDistiller's (the same loss and negatives); the segmentation and detection methods (SKD,
  CWD, FCFD for detection) are not in this table.
- mdistiller's OFD and ReviewKD, the Knowledge-Distillation-Zoo's IRG and SRRL on the
  cross-architecture pair: the references' code is written for their ResNets (OFD, ReviewKD
  configuration), cannot run on mobilenetv2's channel gap (IRG-t halves channels once), or
  reads a last feature map that RepDistiller's mobilenetv2 does not expose (SRRL: its
  feature list stops before conv2, the zoo's last stage includes it).
- SRRL's released script calls its feature loss as `statm_loss(feat_s, feat_t)`, which
  passes the tensors to the module's constructor and raises `TypeError`: the script cannot
  run as released. The fixtures use the evident intent, `statm_loss()(feat_s, feat_t)` (the
  trajectory fixture gives the script's `statm_loss` name that call).
- RKD, SP and CC are checked against RepDistiller only (their authors' code is not public
  or is what RepDistiller restructured).

## Deviations fixed with these fixtures (issue 14)

1. CC: the benchmark's formulation (RepDistiller's `Correlation` on 128-d linear embeddings
   of both networks) is `formulation: benchmark`, the default and the recipes'; the paper's
   kernel correlation stays `formulation: paper` (about 600x smaller at the same weight).
2. FitNet: the hint is at the second residual stage (`position: 3`, the benchmark's
   `hint_layer=2`); `regressor: convreg` is the benchmark's ConvReg (the default since issue
   20), `bridge` FCFD's bridge.
3. AT, VID, OFD: the stage outputs after the stem (`include_stem: true` for the former
   pairing); AT is `beta * sum` (the paper's `beta / 2` is `beta: 500`).
4. FCFD recipes: the authors' ten per-pair CIFAR configurations; Config L2 weights 5.
5. FCFD pooled L2: ReLU before pooling, as the authors.
6. Teacher BatchNorm: `teacher_bn: eval | batch` (FCFD and OFD: `batch`, as the authors'
   and mdistiller's train-mode teachers, the default since issue 20).
7. KD: CE 0.1 / KL 0.9 (the benchmark's KD row; the default since issue 20).
8. CRD runs in float64 (the bank keeps the model's dtype).
9. FRSKD: the self-teacher's CE reaches the student backbone (`detach_features: true` for
   the former flow).
10. IRG: the Knowledge-Distillation-Zoo's pairing and averaging (the weights' source);
    `one_to_many`, `edge_reduction: sum` named alternatives.

## Defaults changed to the reference code's (issue 20)

Each method's `Config` default is now its reference code's (`tests/methods/test_method_defaults.py`
names the file and line of each); kdlab's former choice stays a named setting. Every recipe
writes the value it runs with, so none changed its effect: the Fashion-MNIST, scenes,
Cityscapes / VOC and quickstart runs keep kdlab's former values, and so do the CIFAR-100 /
ImageNet CRD and ReviewKD recipes (their trajectory fixtures run the reference's setting).

{defaults}

The ReviewKD CIFAR-100 recipes follow the ReviewKD authors' `CIFAR-100/train.py` (batch 128,
LR 0.1, Nesterov), whose loop is a script body, not a function: the trajectory runs
mdistiller's ReviewKD instead, with mdistiller's optimiser. The authors' script differs from
kdlab's recipe in three more ways, not yet settings: its teacher is never put in eval mode
(train-mode BatchNorm, `train.py` never calls `teacher.eval()`), its warm-up is
`min(1, epoch / 20)` with 0-based epochs (no review loss in the first epoch; mdistiller's and
kdlab's ramp starts at 1/20) and it decays the LR one epoch later (`lr_schedule` after epoch
150, 180, 210 ends).
"""


TRAJECTORY = """
## Step-exact: training trajectories

Each case below runs a few training steps twice: through the reference's own training loop
(`train_one_epoch`, `train_iter`, `train_distill`, `train`: whatever its scripts call per
epoch and per step, with their optimiser, LR schedule, warm-ups and teacher mode), on the
weights of kdlab's freshly built distiller, and through kdlab's own step: the pair's CIFAR-100
recipe -> `Optimisation.build` -> `train_step` (training/step.py), `set_epoch` at every
epoch start. Both see
the same {batch}-image float64 batches (one per step), the same labels and the same forced
random draws (FCFD's sampled paths, CRD's negative rows). The steps fall in epochs {epochs}
(the epochs between are skipped; only the LR schedule advances through them), so warm-ups
and the first LR milestone are crossed. Per step the reference's learning rate, weighted loss
terms, total loss and a digest of every tensor of kdlab's distiller `state_dict` (parameters
and buffers: norm and a seeded random projection of the tensor and of its change since the
start) are stored; CI (`tests/methods/test_parity_trajectory.py`) holds kdlab to them at a relative
{rtol:g}.

- fixtures: `tests/fixtures/parity/trajectory/<method>__<pair>.json` (references and commits,
  the reference's optimiser settings, the steps)
- produced by: `{command}` (`benchmarks/parity/trajectory.py`; the cases and kdlab's side:
  `benchmarks/parity/trajectory_setup.py`)
- shims while a reference runs: `.cuda()` is a no-op; `Tensor.float()` leaves float64 alone
  (mdistiller's and RepDistiller's loops cast the images); stand-ins for imports not used
  here (tensorboardX, torchsummary, easydict, yacs' CfgNode, scipy's normal CDF); the FCFD
  authors' timm `NativeScaler` is the plain backward + step it performs without FP16; the SRRL
  script's `statm_loss` name calls the module's forward (the released call raises
  `TypeError`); CRD's reference memory is built in float64 (its `params` buffer would hold
  T = 0.07 and Z in float32)

| case | reference loop | steps | terms: max rel. diff | weights: max rel. diff | tensors compared |
|---|---|---|---|---|---|
{rows}

Settings a case runs with that its recipe does not write, and tensors left out:

{notes}
"""

#: (method, setting, former default, default = the reference's, where the reference sets it)
DEFAULTS = [
    ("kd", "`ce_weight` / `kd_weight`", "1.0 / 1.0", "0.1 / 0.9",
     "RepDistiller `scripts/run_cifar_distill.sh:5`, mdistiller `engine/cfg.py:63-64`"),
    ("fitnet", "`regressor`", "`bridge`", "`convreg`", "RepDistiller `train_student.py:187`"),
    ("fcfd", "`teacher_bn`", "`eval`", "`batch`", "FCFD `classification/cifar/main.py:280`"),
    ("fcfd", "`bridge_init`", "`kaiming` (every bridge conv, no bias)", "`authors`",
     "FCFD `classification/models/meta.py:84, 177-188`"),
    ("ofd", "`teacher_bn`", "`eval`", "`batch`", "mdistiller `distillers/OFD.py:114-121`"),
    ("reviewkd", "`teacher_features`", "`stage_outputs`", "`pre_relu`",
     "ReviewKD `CIFAR-100/train.py:222`, mdistiller `distillers/ReviewKD.py:89`"),
    ("crd", "`negatives`", "`uniform` (with replacement)", "`class`",
     "RepDistiller `dataset/cifar100.py:166-167`, mdistiller `dataset/cifar100.py:109-111`"),
]


def defaults_table() -> str:
    rows = ["| method | setting | former default | default (the reference's) | source |",
            "|---|---|---|---|---|"]
    rows += [f"| {m} | {k} | {old} | {new} | {where} |" for m, k, old, new, where in DEFAULTS]
    return "\n".join(rows)


LOOPS = {"fcfd": "FCFD authors' `Trainer.train_one_epoch` (MetaModel)",
         "mdistiller": "mdistiller `BaseTrainer.train_iter` / `CRDTrainer.train_iter`",
         "repdistiller": "RepDistiller `helper/loops.py` `train_distill`",
         "simkd": "SimKD authors' `helper/loops.py` `train_distill`",
         "frskd": "FRSKD authors' `classification/utils.py` `train`",
         "srrl": "SRRL authors' `train_imagenet_distillation.py` `train`"}


def trajectory_section() -> str:
    fixtures = [json.loads(p.read_text()) for p in sorted(TS.FIXTURES.glob("*.json"))]
    if not fixtures:
        return ""
    rows, notes = [], []
    for fx in fixtures:
        ref, = fx["references"]
        commit = fx["references"][ref]["commit"][:7]
        worst = fx["max_relative_difference"]
        rows.append(f"| {fx['case']} | {LOOPS[ref]} @ `{commit}` | {len(fx['steps'])} | "
                    f"{worst['terms']:.1e} | {worst['weights']:.1e} | "
                    f"{len(fx['steps'][0]['digest'])} |")
        for why in (fx["options_reason"], fx["optim_reason"]):
            if why:
                notes.append(f"- {fx['case']}: {why}.")
        for prefix, why in fx["exclude"].items():
            notes.append(f"- {fx['case']}: `{prefix}` not compared: {why}.")
    first = fixtures[0]
    command = first["command"].rsplit(" --cases", 1)[0]
    return TRAJECTORY.format(batch=first["batch"], epochs=", ".join(
        str(e) for e, _ in first["plan"]) + " (the first milestone)", rtol=TS.RTOL,
        command=command, rows="\n".join(rows), notes="\n".join(dict.fromkeys(notes)))


DENSE = """
## Step-exact: segmentation and detection trajectories

The same kind of check for the dense methods, with a recipe's method, optimiser and schedule
settings unchanged on kdlab's CPU networks (the recipes' networks are too large for CI),
3 float64 steps each, held by CI to a relative {rtol:g}:

- CIRKD's own `Trainer.train` (`train_kd.py`, its arguments parsed from its training scripts,
  the hinge critic's step included) for SKD and CWD as CIRKD ran them, on `seg_resnet20` ->
  `seg_resnet8` (`tests/methods/test_parity_trajectory_cirkd.py`; produced by
  `benchmarks/parity/cirkd_trajectory.py`, cases in `cirkd_trajectory_setup.py`);
- the FCFD authors' detection distiller (`RCNNKD.forward`, FCFD branch) stepped by Detectron2
  v0.6's `SimpleTrainer.run_step`, `build_optimizer` and warm-up schedule, with the COCO
  recipe's settings on `frcnn_tiny_r18` -> `frcnn_tiny_r10_slim`; the detector parts are
  kdlab's torchvision modules on both sides, so the reference backs the seven FCFD terms, the
  optimiser and the schedule (`tests/methods/test_parity_trajectory_fcfd_detection.py`;
  produced by `benchmarks/parity/fcfd_detection_trajectory.py`, the case in
  `fcfd_detection_trajectory_setup.py`).

| case | recipe | reference | steps | terms: max rel. diff | weights: max rel. diff | tensors |
|---|---|---|---|---|---|---|
{rows}
"""


def dense_section() -> str:
    paths = sorted(P.FIXTURES.glob("trajectory_cirkd/*.json")) + sorted(
        P.FIXTURES.glob("trajectory_detection/*.json"))
    rows = []
    for fx in (json.loads(p.read_text()) for p in paths):
        refs = ", ".join(f"{v['repository'].removeprefix('github.com/')} @ `{v['commit'][:7]}`"
                         for _, v in sorted(fx["references"].items()))
        worst = fx["max_relative_difference"]
        rows.append(f"| {fx['case']} | `{fx['recipe']}` | {refs} | {len(fx['steps'])} | "
                    f"{worst['terms']:.1e} | {worst['weights']:.1e} | "
                    f"{len(fx['steps'][0]['digest'])} |")
    return DENSE.format(rtol=TS.RTOL, rows="\n".join(rows)) if rows else ""


DETECTRON2 = """
## Detectron2's network function on its weight files

Detectron2 v0.6's own Faster R-CNN R-50-FPN (`build_model` from `configs/Base-RCNN-FPN.yaml` at
small widths: bottleneck width 8, FPN 16 channels, FC 32, {classes} classes, STRIDE_IN_1X1), on
seeded float64 weights (seed {seed}, {tensors} tensors) loaded by its `DetectionCheckpointer`
from a model-zoo-format `.pkl`, one {h} x {w} image, against kdlab's `fasterrcnn_resnet50_fpn`
with the Detectron2 options loading the same file
(`tests/tasks/detection/test_detectron2_parity.py`; produced by
`benchmarks/parity/detectron2_weights_fixture.py`; detectron2 @ `{commit}`). CI holds every
stage to 1e-9 of its largest value, the boxes after the anchors and the detection scores to 1e-6
(Detectron2 keeps boxes in float32 `Boxes` even in a float64 model). Measured (2026-12-07, 1 and
2 threads): input, res2-res5, p2-p6, the RPN's objectness and deltas, the box head's scores and
deltas on {boxes} fixed boxes within 4.2e-15; anchors exact; {proposals} proposals within 1.1e-7
and {detections} detections (boxes 1.3e-7, scores 3.5e-8, classes equal); an MSRA-named (Caffe2)
file through both loaders: res2-res5 within 2.0e-15.
"""


def detectron2_section() -> str:
    path = P.FIXTURES.parent / "parity_detectron2" / "faster_rcnn_r50_fpn.json"
    if not path.is_file():
        return ""
    fx = json.loads(path.read_text())
    h, w = fx["image_size"]
    return DETECTRON2.format(
        classes=fx["num_classes"], seed=fx["seed"], tensors=len(fx["shapes"]), h=h, w=w,
        commit=fx["detectron2_commit"][:7], boxes=len(fx["fixed_boxes"]),
        proposals=fx["stages"]["proposals"]["shape"][0],
        detections=len(fx["stages"]["detections"]["classes"]))


DETECTRON2_LOSSES = """
## Detectron2's training losses (`losses: detectron2`)

Detectron2 v0.6's own `RPN.losses` and `FastRCNNOutputLayers.losses` (the defaults of its
`config/defaults.py`: `SMOOTH_L1_BETA` 0, loss weights 1, `RPN.BATCH_SIZE_PER_IMAGE` 256) on
stored float64 inputs (seed {seed}: {images} images, {anchors} anchors each with {labelled}
labelled, {rois} ROIs over {classes} classes) against kdlab's RPN `compute_loss` and ROI loss
with `losses: detectron2` (`tests/tasks/detection/test_detector_losses.py`; produced by
`benchmarks/parity/detectron2_losses_fixture.py`; detectron2 @ `{commit}`). CI holds each loss
to 1e-12 relative. Measured (2026-12-07, 2 threads): {values}; the largest relative difference
1.5e-16 (`loss_cls`), the other three exact.
"""


def detectron2_losses_section() -> str:
    path = P.FIXTURES.parent / "parity_detectron2" / "losses.json"
    if not path.is_file():
        return ""
    fx = json.loads(path.read_text())
    rpn, roi = fx["inputs"]["rpn"], fx["inputs"]["roi"]
    return DETECTRON2_LOSSES.format(
        seed=fx["seed"], images=len(rpn["gt_labels"]), anchors=len(rpn["anchors"]),
        labelled=sum(v >= 0 for v in rpn["gt_labels"][0]), rois=len(roi["scores"]),
        classes=fx["num_classes"], commit=fx["detectron2_commit"][:7],
        values=", ".join(f"`{k}` {v:.10g}" for k, v in fx["losses"].items()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=P.ROOT / "benchmarks" / "results" / "parity.md")
    args = ap.parse_args(argv)
    fixtures = [json.loads(p.read_text()) for p in sorted(P.FIXTURES.glob("*.json"),
                                                          reverse=True)]
    first = fixtures[0]
    refs = "\n".join(f"- {NAMES[k]}: {v['repository']} @ `{v['commit']}`"
                     for k, v in sorted(first["references"].items()))
    lines = [HEADER.format(command=first["command"], seeds=first["seeds"],
                           crd_size=first["crd"]["train_size"],
                           crd_k=first["crd"]["num_negatives"], refs=refs)]
    lines.append("| pair | method | reference | term | kdlab | reference value | rel. diff | "
                 "parity |")
    lines.append("|---|---|---|---|---|---|---|---|")
    reasons: dict[str, list[str]] = {}
    for fx in fixtures:
        for method in sorted(fx["methods"]):
            entry = fx["methods"][method]
            for term, v in sorted(entry["terms"].items()):
                rel = abs(v["kdlab"] - v["reference"]) / max(abs(v["reference"]), 1e-300)
                mark = "match" if v["match"] else "differs (intentional)"
                lines.append(f"| {fx['pair']} | {method} | {NAMES[entry['reference']]} | "
                             f"{term} | {v['kdlab']:.10g} | {v['reference']:.10g} | "
                             f"{rel:.1e} | {mark} |")
                if not v["match"]:
                    reasons.setdefault(v["reason"], []).append(
                        f"{method} `{term}` on {fx['pair']}")
    text = "\n".join(f"- {', '.join(where)}: {why}." for why, where in reasons.items())
    lines.append(trajectory_section())
    lines.append(dense_section())
    lines.append(detectron2_section())
    lines.append(detectron2_losses_section())
    lines.append(FOOTER.format(reasons=text, defaults=defaults_table()))
    args.out.write_text("\n".join(lines))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
