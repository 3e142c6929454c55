#!/usr/bin/env bash
# Does fine-tuning the whole backbone help on a data set it never saw? (issue 11, CPU-sized)
#
# Trains efficientnet-lite0 end to end (--finetune-backbone, backbone lr x 0.1) on the train
# splits of every data set but HELD_OUT, starting from the projector of that fold's frozen-
# backbone model, then scores HELD_OUT's test split with both models and the backbone cosine in
# one `bta-core eval` run (the same pairs for all three; no calibration on the held-out set).
#
#   benchmarks/finetune_cpu.sh OUT_DIR
#
# Environment: DATA (../shared/data), HELD_OUT (bccd), FOLD_MODEL (the frozen fold model,
# default /work/cache/heldout/without_$HELD_OUT.safetensors from benchmarks/holdout.py),
# EPOCHS (12), BATCH (32), SIZE (224). About 25 minutes of training on a 2-core CPU.
set -euo pipefail
OUT=${1:?usage: finetune_cpu.sh OUT_DIR}
DATA=${DATA:-../shared/data}
HELD_OUT=${HELD_OUT:-bccd}
FOLD_MODEL=${FOLD_MODEL:-/work/cache/heldout/without_$HELD_OUT.safetensors}
mkdir -p "$OUT"
TRAIN=()
for csv in "$DATA"/*/splits.csv; do
  [ "$(basename "$(dirname "$csv")")" = "$HELD_OUT" ] || TRAIN+=("$csv")
done
bta-core train "${TRAIN[@]}" --split train --backbone efficientnet-lite0 --mode combined \
  --views reuse --finetune-backbone --init-projector "$FOLD_MODEL" \
  --image-size "${SIZE:-224}" --batch-size "${BATCH:-32}" --epochs "${EPOCHS:-12}" \
  --lr-start 0.001 --lr-end 0.00005 --save-every 2 --device cpu \
  --out "$OUT/finetuned_without_$HELD_OUT.safetensors"
bta-core eval "$DATA/$HELD_OUT/splits.csv" --protocol reuse,paper --split test \
  --checkpoint "$OUT/finetuned_without_$HELD_OUT.safetensors" --checkpoint "$FOLD_MODEL" \
  --baselines backbone-cosine --calibration-split '' --device cpu --out "$OUT/eval_$HELD_OUT"
