#!/usr/bin/env bash
# FCFD Table 3 (Liu et al., ICLR 2023; COCO 2017 train -> val2017, Faster R-CNN FPN on
# Detectron2): every row kdlab can run, for the three pairs of the authors' detection configs
# (LiuDongyang6/FCFD @ 2aefb7b detection/README.md:21-23), each a recipe under recipes/coco/:
# the exact commands. Table 7 (inheriting strategy, R101 -> R50) is the fcfd_inherit row.
#
#   DATA=/path/to/coco WEIGHTS=/path/to/weights benchmarks/gpu/coco_table3.sh [--dry] [ROW ...]
#
# ROW: a recipe path below recipes/coco without .yaml (default: every row below). --dry prints
# the commands without running them (no GPU needed). Rows, what each stands for:
#   ce/<student>                  the non-distillation baseline (FCFD's protocol: Detectron2's
#                                 1x at batch 8, fp16)
#   fgfi/<pair>                   FGFI (Wang et al., CVPR 2019): no FPN code by its authors;
#                                 their loss settings on the FCFD rows' protocol
#   reviewkd/<pair>               "Review" (Chen et al., CVPR 2021): the authors' Detectron2
#                                 configs (dvlab-research/ReviewKD @ cede6ea
#                                 Detection/configs/ReviewKD-*.yaml), 4 GPUs x 2 images as they
#                                 trained (Detection/README.md:5-6, 26)
#   fcfd/<pair>                   FCFD, the authors' configs (detection/configs/FCFD-*.yaml),
#                                 one GPU x 8 images as they trained (detection/README.md:5-6)
#   fcfd_inherit/<R101 -> R50>    FCFD + inheriting strategy (Table 7, FCFD-R50-R101-INHERIT.yaml)
# Not run: the ICD row (Kang et al., NeurIPS 2021; not implemented in kdlab, out of the scope of
# issue 25). Table 3 compares FGFI, ICD and Review with FCFD (Sec. 3.1): it has no KD row, so
# kdlab's kd (on the ROI outputs) has none here either. The teachers are Detectron2's model-zoo files (box AP 42.0
# R101-FPN 3x, 40.2 R50-FPN 3x: MODEL_ZOO.md); each run evaluates its teacher once before
# training. Table 3's published numbers are not in kdlab's text of the paper: read them from
# the published PDF (Table 3, Table 7).
#
# WEIGHTS holds the files the recipes' headers name with their URLs: model_final_f6e8b1.pkl
# (R101-FPN 3x), model_final_280758.pkl (R50-FPN 3x), R-50.pkl (MSRA),
# resnet18-f37072fd.pth and mobilenet_v2-b0353104.pth (torchvision). Each row is 180,000
# iterations at batch 8 (1.44M images); none has been run by kdlab yet (no GPU with COCO was
# available). NPROC (default 1) runs the single-GPU rows under torchrun with the global batch
# kept (8 / NPROC per process); REVIEW_NPROC (default 4) does the same for the ReviewKD rows.
# Results: runs/coco/<row>/metrics.csv, the best val map (mAP@[.5:.95], in percent).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dry=0
if [[ "${1:-}" == "--dry" ]]; then
    dry=1
    shift
fi
DATA="${DATA:?set DATA to the COCO 2017 folder (train2017/, val2017/, annotations/)}"
WEIGHTS="${WEIGHTS:?set WEIGHTS to the folder of the weight files (see the header)}"
NPROC="${NPROC:-1}"
REVIEW_NPROC="${REVIEW_NPROC:-4}"
PYTHON="${PYTHON:-python}"

# the ImageNet backbone file of each student, the model-zoo detector of each teacher
declare -A BACKBONE=(
    [fasterrcnn_resnet18_fpn]=resnet18-f37072fd.pth
    [fasterrcnn_resnet50_fpn]=R-50.pkl
    [fasterrcnn_mobilenet_v2_fpn]=mobilenet_v2-b0353104.pth
)
declare -A DETECTOR=(
    [fasterrcnn_resnet101_fpn]=model_final_f6e8b1.pkl
    [fasterrcnn_resnet50_fpn]=model_final_280758.pkl
)
PAIRS=(fasterrcnn_resnet18_fpn_from_fasterrcnn_resnet101_fpn
       fasterrcnn_resnet50_fpn_from_fasterrcnn_resnet101_fpn
       fasterrcnn_mobilenet_v2_fpn_from_fasterrcnn_resnet50_fpn)

rows=("$@")
if [[ ${#rows[@]} -eq 0 ]]; then
    rows=(ce/fasterrcnn_resnet18_fpn ce/fasterrcnn_resnet50_fpn ce/fasterrcnn_mobilenet_v2_fpn)
    for method in fgfi reviewkd fcfd; do
        for pair in "${PAIRS[@]}"; do rows+=("$method/$pair"); done
    done
    rows+=(fcfd_inherit/fasterrcnn_resnet50_fpn_from_fasterrcnn_resnet101_fpn)
fi
if [[ $dry -eq 0 ]]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
'no CUDA device: run with --dry to print the commands')"
fi

cd "$root"
for row in "${rows[@]}"; do
    recipe="recipes/coco/$row.yaml"
    [[ -f "$recipe" ]] || { echo "no recipe $recipe" >&2; exit 2; }
    name="${row#*/}"
    student="${name%%_from_*}"
    args=(--set data.root="$DATA" --set model.student_pretrained="$WEIGHTS/${BACKBONE[$student]}")
    case "$row" in
        ce/*) verb=train ;;
        *) verb=distill
           args+=(--set model.teacher_pretrained="$WEIGHTS/${DETECTOR[${name#*_from_}]}") ;;
    esac
    case "$row" in reviewkd/*) nproc="$REVIEW_NPROC" ;; *) nproc="$NPROC" ;; esac
    (( 8 % nproc == 0 )) || { echo "$nproc processes cannot share the batch of 8" >&2; exit 2; }
    if [[ "$nproc" -gt 1 ]]; then
        launch=("$PYTHON" -m torch.distributed.run --nproc_per_node="$nproc" -m kdlab)
        args+=(--set data.batch_size=$((8 / nproc)))
    else
        launch=("$PYTHON" -m kdlab)
    fi
    if [[ $dry -eq 1 ]]; then
        echo "${launch[*]} $verb $recipe ${args[*]}"
    else
        "${launch[@]}" "$verb" "$recipe" "${args[@]}"
    fi
done
