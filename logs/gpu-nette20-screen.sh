#!/bin/bash
# Prepared 2026-11-30 for the next session that is lent a GPU (plan: logs/PLAN-gpu-nette20-screen.txt): a one-seed
# screen of the 20-epoch recipe on imagenette, several runs at once on the one GPU (each run, batch 64 at 128 px,
# leaves most of an H200 idle: 1,640-2,190 img/s alone against 4,653 img/s for batch 256 at 224 px in bench.py).
# Run on the device machine from the repository root with third_party/ carried as for logs/gpu-run-2026-11-30.sh:
#   DEADLINE=530 PARALLEL=5 bash logs/gpu-nette20-screen.sh
# A run starts only while the deadline leaves it time (the first wave's duration, once known); logs go to
# $OUT/logs.tgz, one summary line per run to stdout and $OUT/summary.txt. Runs here are not timings.
set -u
source logs/gpu-waves.sh  # say, run_one, run_waves
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEADLINE=${DEADLINE:-530}; PARALLEL=${PARALLEL:-5}; WORKERS=${WORKERS:-2}
T0=$(date +%s); L=/tmp/glogs; R=/tmp/gruns; mkdir -p $L $R
for f in third_party/*.tgz; do [ -e "$f" ] && tar xzf $f -C third_party; done
D=third_party/imagenette-128
LAST_EPOCH=20
R20="--data $D --epochs 20 --batch-size 64 --lr 4.0 --warmup-epochs 1 --weight-decay 5e-5 --label-smoothing 0.1
     --mixup 0 --cutmix 0 --auto-augment none --random-erase 0 --min-scale 0.6 --train-res 128 --val-res 128
     --val-resize 128 --zero-init-residual --no-ema --workers $WORKERS --channels-last --decay cosine --seed 0"
PROGRAM="train.py $R20"
# tag | flags added to (and overriding) the 20-epoch recipe; baseline first, then in the plan's order.
RUNS=(
  "base|"
  "sched5|--warmup-epochs 2 --decay linear"
  "ta|--auto-augment ta_wide"
  "mixup|--mixup 0.2"
  "lr2|--lr 2.0"
  "lr6|--lr 6.0"
  "ms035|--min-scale 0.35"
  "adamw|--opt adamw --lr 0.064 --weight-decay 0.01"
  "base-s1|--seed 1"
)
say "start $(date -u +%FT%TZ) deadline ${DEADLINE}s parallel $PARALLEL workers $WORKERS"
nvidia-smi -L | tee -a $OUT/summary.txt
run_waves
