#!/usr/bin/env bash
# CIRKD's Cityscapes rows (winycg/CIRKD @ 48eb81b README.md:59-64), each a recipe under
# recipes/cityscapes/: the exact commands. Needs 8 CUDA GPUs (CIRKD: 8 x RTX 3090, 2 images
# each, SyncBN), the Cityscapes files (leftImg8bit/, gtFine/) and CIRKD's weight files
# (README.md:24-26, 45: resnet18-imagenet.pth, resnet101-imagenet.pth, mobilenetv2-imagenet.pth,
# deeplabv3_resnet101_citys_best_model.pth) under pretrained/. Each run is 40,000 iterations;
# none has been run by kdlab yet (no GPU with the data was available).
#
#   DATA=/path/to/cityscapes benchmarks/gpu/cirkd_cityscapes.sh [ROW ...]
#
# ROW: a recipe path below recipes/cityscapes without .yaml (default: the four DeepLabV3-R18
# rows). On fewer GPUs, keep the global batch: NPROC=4 BATCH=4 (4 x 4 = 16); BatchNorm then
# sees 4 images per GPU instead of CIRKD's 2 synchronised over 8, which is the same statistics
# only with sync_bn (on, in every recipe). Results: runs/cityscapes/<row>/metrics.csv, the best
# val_student_miou of its 50 evaluations is the number to compare with the README's.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DATA="${DATA:?set DATA to the Cityscapes folder (leftImg8bit/, gtFine/)}"
NPROC="${NPROC:-8}"
BATCH="${BATCH:-$((16 / NPROC))}"
PYTHON="${PYTHON:-python}"
rows=("$@")
if [[ ${#rows[@]} -eq 0 ]]; then
    rows=(ce/deeplabv3_resnet18_cirkd
          skd/deeplabv3_resnet18_cirkd_from_deeplabv3_resnet101_cirkd
          cwd/deeplabv3_resnet18_cirkd_from_deeplabv3_resnet101_cirkd
          kd/deeplabv3_resnet18_cirkd_from_deeplabv3_resnet101_cirkd)
fi
cd "$root"
for row in "${rows[@]}"; do
    case "$row" in ce/*) verb=train ;; *) verb=distill ;; esac
    "$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC" -m kdlab "$verb" \
        "recipes/cityscapes/$row.yaml" --set data.root="$DATA" --set data.batch_size="$BATCH"
done
