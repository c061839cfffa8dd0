#!/bin/bash
# Prepared 2026-11-30 (sixth session) for the next session lent a GPU: the seeds that the Ranger probe earned
# (logs/PLAN-ranger-2026-11-30h.txt; BENCHMARKS "Ranger"), side by side with the SGD recipe on the same GPU in the
# same call, so that the pairs (same seed: same initial weights, same data order) share machine, torch and time.
# Run on the device machine from the repository root with third_party/nette.tgz carried (as logs/gpu-nette20-screen.sh):
#   DEADLINE=530 PARALLEL=5 LR=0.064 bash logs/gpu-ranger-seeds.sh
# Changed 2026-12-01 (seventh session): Ranger now runs train.py's own --opt ranger --decay flat-cos (the CPU seeds
# ran logs/ranger-probe.py; logs/ranger-flag-vs-probe.py compares the two), so a GPU session also measures the flag.
# LR is train.py's --lr (per 1024 images; 0.064 at batch 64 is a peak of 4e-3). Runs are for accuracy, not timing:
# several share the GPU. Logs go to $OUT/logs.tgz, one summary line per run to stdout and $OUT/summary.txt.
set -u
source logs/gpu-waves.sh  # say, run_one, run_waves
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEADLINE=${DEADLINE:-530}; PARALLEL=${PARALLEL:-5}; WORKERS=${WORKERS:-2}; LR=${LR:-0.064}
T0=$(date +%s); L=/tmp/glogs; R=/tmp/gruns; mkdir -p $L $R
for f in third_party/*.tgz; do [ -e "$f" ] && tar xzf $f -C third_party; done
D=third_party/imagenette-128
COMMON="--data $D --epochs 5 --batch-size 64 --label-smoothing 0.1 --mixup 0 --cutmix 0 --auto-augment none
        --random-erase 0 --min-scale 1.0 --train-res 128 --val-res 128 --val-resize 128 --zero-init-residual --no-ema
        --workers $WORKERS --channels-last"
SGD="train.py $COMMON --lr 4.0 --warmup-epochs 2 --weight-decay 5e-5 --decay linear"   # the 5-epoch recipe
RANGER="train.py $COMMON --opt ranger --decay flat-cos --lr $LR --warmup-epochs 0 --weight-decay 0.01"   # since 2026-12-01
PROGRAM=; LAST_EPOCH=5  # each entry names its own program
# tag | program and flags; ranger and sgd alternate so that a deadline cuts pairs, not one side.
RUNS=()
for s in 0 1 2 3 4; do RUNS+=("ranger-s$s|$RANGER --seed $s" "sgd-s$s|$SGD --seed $s"); done
say "start $(date -u +%FT%TZ) deadline ${DEADLINE}s parallel $PARALLEL workers $WORKERS ranger --lr $LR"
nvidia-smi -L | tee -a $OUT/summary.txt
run_waves
