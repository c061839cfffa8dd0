#!/bin/bash
# Prepared 2026-11-30 for the next session that is lent a GPU (plan: logs/PLAN-gpu-nette20-screen.txt): a one-seed
# screen of the 20-epoch recipe on imagenette, several runs at once on the one GPU (each run, batch 64 at 128 px,
# leaves most of an H200 idle: 1,640-2,190 img/s alone against 4,653 img/s for batch 256 at 224 px in bench.py).
# Run on the device machine from the repository root with third_party/ carried as for logs/gpu-run-2026-11-30.sh:
#   DEADLINE=530 PARALLEL=5 bash logs/gpu-nette20-screen.sh
# A run starts only while the deadline leaves it time (the first wave's duration, once known); logs go to
# $OUT/logs.tgz, one summary line per run to stdout and $OUT/summary.txt. Runs here are not timings.
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEADLINE=${DEADLINE:-530}; PARALLEL=${PARALLEL:-5}; WORKERS=${WORKERS:-2}
T0=$(date +%s); L=/tmp/glogs; R=/tmp/gruns; mkdir -p $L $R
for f in third_party/*.tgz; do [ -e "$f" ] && tar xzf $f -C third_party; done
D=third_party/imagenette-128
R20="--data $D --epochs 20 --batch-size 64 --lr 4.0 --warmup-epochs 1 --weight-decay 5e-5 --label-smoothing 0.1
     --mixup 0 --cutmix 0 --auto-augment none --random-erase 0 --min-scale 0.6 --train-res 128 --val-res 128
     --val-resize 128 --zero-init-residual --no-ema --workers $WORKERS --channels-last --decay cosine --seed 0"
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
say() { echo "$*" | tee -a $OUT/summary.txt; }
run_one() {  # tag flags... (killed at the deadline: SIGTERM saves last.pt, the log shows how far it got)
  local tag=$1; shift
  local s=$(date +%s)
  timeout -k 10 $(( DEADLINE - (s - T0) )) $PY train.py $R20 "$@" --output $R/$tag > $L/$tag.log 2>&1
  say "DONE $tag rc=$? $(( $(date +%s) - s ))s | $* | $(grep -E '^epoch 20  ' $L/$tag.log | grep -oE 'val_top1 [0-9.]+  val_top5 [0-9.]+')"
  tar czf $OUT/.logs-$tag.tgz -C $L . && mv $OUT/.logs-$tag.tgz $OUT/logs.tgz  # runs end concurrently: no torn tar
}
say "start $(date -u +%FT%TZ) deadline ${DEADLINE}s parallel $PARALLEL workers $WORKERS"
nvidia-smi -L | tee -a $OUT/summary.txt
NEED=0; i=0
while [ $i -lt ${#RUNS[@]} ]; do
  left=$(( DEADLINE - ($(date +%s) - T0) ))
  if [ $left -lt $NEED ]; then say "SKIP ${RUNS[@]:$i}: $left s left < $NEED"; break; fi
  wave=$(date +%s)
  for ((k = 0; k < PARALLEL && i < ${#RUNS[@]}; k++, i++)); do
    run_one ${RUNS[$i]%%|*} ${RUNS[$i]#*|} &
  done
  wait
  NEED=$(( $(date +%s) - wave ))  # the next wave needs as long as this one took
done
say "end $(date -u +%FT%TZ) after $(( $(date +%s) - T0 ))s"
