#!/bin/bash
# Prepared 2026-11-30 (sixth session) for the next session lent a GPU: the seeds that the Ranger probe earned
# (logs/PLAN-ranger-2026-11-30h.txt; BENCHMARKS "Ranger"), side by side with the SGD recipe on the same GPU in the
# same call, so that the pairs (same seed: same initial weights, same data order) share machine, torch and time.
# Run on the device machine from the repository root with third_party/nette.tgz carried (as logs/gpu-nette20-screen.sh):
#   DEADLINE=530 PARALLEL=5 LR=0.064 bash logs/gpu-ranger-seeds.sh
# Changed 2026-12-01 (seventh session): Ranger now runs train.py's own --opt ranger --decay flat-cos (the CPU seeds
# ran logs/ranger-probe.py; logs/ranger-flag-vs-probe.py compares the two), so a GPU session also measures the flag.
# Changed 2026-12-01 (fourteenth session): Ranger runs the recipe's batch 32 (peak 2e-3 at --lr 0.064); SGD keeps
# its recipe's batch 64. MODE=beta1 instead runs plan p's question on seeds 0-4 (BENCHMARKS "Ranger with the
# leader's beta1"): the recipe, --momentum 0.95, and --momentum 0.95 --lr 0.256 (the leader's 8e-3 at batch 32):
#   DEADLINE=530 PARALLEL=6 MODE=beta1 bash logs/gpu-ranger-seeds.sh   (PARALLEL a multiple of 3: waves hold whole seeds)
# LR is train.py's --lr (per 1024 images; 0.064 at batch 32 is a peak of 2e-3). Runs are for accuracy, not timing:
# several share the GPU. Logs go to $OUT/logs.tgz, one summary line per run to stdout and $OUT/summary.txt.
set -u
source logs/gpu-waves.sh  # say, run_one, run_waves
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEADLINE=${DEADLINE:-530}; PARALLEL=${PARALLEL:-5}; WORKERS=${WORKERS:-2}; LR=${LR:-0.064}
MODE=${MODE:-recipe}
T0=$(date +%s); L=/tmp/glogs; R=/tmp/gruns; mkdir -p $L $R
for f in third_party/*.tgz; do [ -e "$f" ] && tar xzf $f -C third_party; done
D=third_party/imagenette-128
COMMON="--data $D --epochs 5 --label-smoothing 0.1 --mixup 0 --cutmix 0 --auto-augment none
        --random-erase 0 --min-scale 1.0 --train-res 128 --val-res 128 --val-resize 128 --zero-init-residual --no-ema
        --workers $WORKERS --channels-last"
SGD="train.py $COMMON --batch-size 64 --lr 4.0 --warmup-epochs 2 --weight-decay 5e-5 --decay linear"   # the 5-epoch recipe
RANGER="train.py $COMMON --batch-size 32 --opt ranger --decay flat-cos --lr $LR --warmup-epochs 0 --weight-decay 0.01"   # since 2026-12-01
PROGRAM=; LAST_EPOCH=5  # each entry names its own program
# tag | program and flags; ranger and sgd alternate so that a deadline cuts pairs, not one side.
RUNS=()
if [ "$MODE" = beta1 ]; then  # a seed's three arms are adjacent; the last --lr given wins (argparse)
  for s in 0 1 2 3 4; do RUNS+=("ranger-s$s|$RANGER --seed $s" "mom0.95-s$s|$RANGER --momentum 0.95 --seed $s"
                               "mom0.95-lr0.256-s$s|$RANGER --momentum 0.95 --lr 0.256 --seed $s"); done
else
  for s in 0 1 2 3 4; do RUNS+=("ranger-s$s|$RANGER --seed $s" "sgd-s$s|$SGD --seed $s"); done
fi
say "start $(date -u +%FT%TZ) mode $MODE deadline ${DEADLINE}s parallel $PARALLEL workers $WORKERS ranger --lr $LR"
nvidia-smi -L | tee -a $OUT/summary.txt
run_waves
