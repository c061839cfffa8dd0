#!/bin/bash
# Prepared 2026-11-30 (sixth session) for the next session lent a GPU: the seeds that the Ranger probe earned
# (logs/PLAN-ranger-2026-11-30h.txt; BENCHMARKS "Ranger"), side by side with the SGD recipe on the same GPU in the
# same call, so that the pairs (same seed: same initial weights, same data order) share machine, torch and time.
# Run on the device machine from the repository root with third_party/nette.tgz carried (as logs/gpu-nette20-screen.sh):
#   DEADLINE=530 PARALLEL=5 LR=0.064 bash logs/gpu-ranger-seeds.sh
# LR is train.py's --lr (per 1024 images; 0.064 at batch 64 is a peak of 4e-3). Runs are for accuracy, not timing:
# several share the GPU. Logs go to $OUT/logs.tgz, one summary line per run to stdout and $OUT/summary.txt.
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEADLINE=${DEADLINE:-530}; PARALLEL=${PARALLEL:-5}; WORKERS=${WORKERS:-2}; LR=${LR:-0.064}
T0=$(date +%s); L=/tmp/glogs; R=/tmp/gruns; mkdir -p $L $R
for f in third_party/*.tgz; do [ -e "$f" ] && tar xzf $f -C third_party; done
D=third_party/imagenette-128
COMMON="--data $D --epochs 5 --batch-size 64 --label-smoothing 0.1 --mixup 0 --cutmix 0 --auto-augment none
        --random-erase 0 --min-scale 1.0 --train-res 128 --val-res 128 --val-resize 128 --zero-init-residual --no-ema
        --workers $WORKERS --channels-last"
SGD="train.py $COMMON --lr 4.0 --warmup-epochs 2 --weight-decay 5e-5 --decay linear"   # the 5-epoch recipe
RANGER="logs/ranger-probe.py $COMMON --lr $LR --warmup-epochs 0 --weight-decay 0.01"   # the probe, flat-cos LR
# tag | program and flags; ranger and sgd alternate so that a deadline cuts pairs, not one side.
RUNS=()
for s in 0 1 2 3 4; do RUNS+=("ranger-s$s|$RANGER --seed $s" "sgd-s$s|$SGD --seed $s"); done
say() { echo "$*" | tee -a $OUT/summary.txt; }
run_one() {  # tag program flags... (killed at the deadline; the log shows how far it got)
  local tag=$1; shift
  local s=$(date +%s)
  PYTHONPATH=. timeout -k 10 $(( DEADLINE - (s - T0) )) $PY "$@" --output $R/$tag > $L/$tag.log 2>&1
  say "DONE $tag rc=$? $(( $(date +%s) - s ))s | $(grep -E '^epoch 5  ' $L/$tag.log | grep -oE 'val_top1 [0-9.]+  val_top5 [0-9.]+')"
  tar czf $OUT/.logs-$tag.tgz -C $L . && mv $OUT/.logs-$tag.tgz $OUT/logs.tgz  # runs end concurrently: no torn tar
}
say "start $(date -u +%FT%TZ) deadline ${DEADLINE}s parallel $PARALLEL workers $WORKERS ranger --lr $LR"
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
