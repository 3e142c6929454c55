#!/usr/bin/env bash
# Train the models `bta-core eval` compares (BTA, BTA-combined, SimCLR, frozen-projector
# "Barlow Twins-style" head), calibrate them on val, and run the three protocols on test.
#
#   benchmarks/train_eval_models.sh OUT_DIR [extra bta-core train flags]
#
# Environment: DATA (default ../shared/data), BACKBONE (efficientnet-lite0), SIZE (128),
# BANK (8: view bank, frozen backbone), EPOCHS (40), HEAD_EPOCHS (30), DEVICE (auto).
# The paper's Barlow Twins baseline needs the official projector (--init-projector
# checkpoint.pth); without it the "head" model is a trained head on a frozen *random* projector.
set -euo pipefail
OUT=${1:?usage: train_eval_models.sh OUT_DIR [train flags]}
shift || true
DATA=${DATA:-../shared/data}
CSV=("$DATA/bccd/splits.csv" "$DATA/dsb2018/splits.csv")
BACKBONE=${BACKBONE:-efficientnet-lite0}
SIZE=${SIZE:-128}
BANK=${BANK:-8}
EPOCHS=${EPOCHS:-40}
HEAD_EPOCHS=${HEAD_EPOCHS:-30}
DEVICE=${DEVICE:-auto}
mkdir -p "$OUT/ckpt"
common=(--backbone "$BACKBONE" --image-size "$SIZE" --view-bank "$BANK" --split train
        --device "$DEVICE" --quiet "$@")
train() {  # name mode [flags]
  local name=$1 mode=$2; shift 2
  [ -f "$OUT/ckpt/$name.safetensors" ] && return 0
  /usr/bin/time -f "$name: %e s" bta-core train "${CSV[@]}" --mode "$mode" "${common[@]}" \
    --out "$OUT/ckpt/$name.safetensors" "$@"
}
train bta bta --epochs "$EPOCHS" --head-epochs "$HEAD_EPOCHS"
train bta-combined combined --epochs "$EPOCHS"
train simclr simclr --epochs "$EPOCHS" --head-epochs "$HEAD_EPOCHS"
train frozen-projector head --epochs "$HEAD_EPOCHS"
ckpts=()
for name in bta bta-combined simclr frozen-projector; do
  bta-core calibrate "$OUT/ckpt/$name.safetensors" "${CSV[@]}" --split val --device "$DEVICE"
  ckpts+=(--checkpoint "$OUT/ckpt/$name.safetensors")
done
for proto in paper reuse scan; do
  bta-core eval "${CSV[@]}" --protocol "$proto" --split test "${ckpts[@]}" \
    --baselines phash,crhash,backbone-cosine --out "$OUT/$proto" --device "$DEVICE"
done
