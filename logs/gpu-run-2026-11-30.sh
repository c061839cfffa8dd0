#!/bin/bash
# The one device call of 2026-11-30 (H200 lent for 15 minutes in all): issue #6 on the GPU first, then #5's figures.
# Run on the device machine from the repository root, with third_party/ carried (ignored, never committed):
#   third_party/imagenette-128  (copy of ../shared/data/imagenette-128)
#   third_party/samples         (50 of the 300 imagenet-samples photos, every 6th class: all 300 do not fit the
#                                64 MiB that travels beside imagenette)
#   third_party/vision_ref      (torchvision references/classification at upstream 428a54c9)
# (The two data folders travel as third_party/nette.tgz and samples.tgz: as files they came to more than 64 MiB.)
# Each step runs only if the time it needs is left before DEADLINE (seconds), each under its own timeout; logs go to
# $OUT/logs.tgz (refreshed after every step) and one summary line per step to stdout and $OUT/summary.txt.
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEADLINE=${DEADLINE:-560}
T0=$(date +%s)
L=/tmp/glogs; R=/tmp/gruns; mkdir -p $L $R
D=third_party/imagenette-128
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
say() { echo "$*" | tee -a $OUT/summary.txt; }

step() {  # step NAME NEED_S TIMEOUT_S command...
  local name=$1 need=$2 to=$3; shift 3
  if [ "$(left)" -lt "$need" ]; then say "SKIP $name: $(left) s left < $need"; return 1; fi
  local s=$(date +%s)
  echo "\$ $*" > $L/$name.log
  timeout -k 5 $to "$@" >> $L/$name.log 2>&1
  local rc=$? took=$(( $(date +%s) - s ))
  [ -f $R/$name/metrics.jsonl ] && cp $R/$name/metrics.jsonl $L/$name.metrics.jsonl
  say "DONE $name rc=$rc ${took}s | $(grep -E '^epoch [0-9]+  |Acc@1|^synthetic|^JPEG|^error' $L/$name.log | tail -1 | cut -c1-170)"
  tar czf $OUT/logs.tgz -C $L .
  LAST=$took
}

# The 5-epoch recipe (README), --workers 12 instead of 2 (16 cores here); the GPU defaults: bf16 autocast, fused SGD.
R5="--data $D --epochs 5 --batch-size 64 --lr 4.0 --warmup-epochs 2 --weight-decay 5e-5 --label-smoothing 0.1
    --mixup 0 --cutmix 0 --auto-augment none --random-erase 0 --min-scale 1.0 --train-res 128 --val-res 128
    --val-resize 128 --zero-init-residual --no-ema --workers 12 --channels-last --decay linear"
R20="${R5/--epochs 5/--epochs 20}"; R20="${R20/--min-scale 1.0/--min-scale 0.6}"
R20="${R20/--warmup-epochs 2/--warmup-epochs 1}"; R20="${R20/--decay linear/--decay cosine}"
# torchvision's reference with the closest settings (BENCHMARKS.md, "torchvision's reference, side by side"), --amp.
TVREF="third_party/vision_ref/train.py --data-path $D --model resnet50 --device cuda --amp --batch-size 64 --epochs 5
    --lr 0.025 --lr-warmup-epochs 1 --lr-warmup-method linear --lr-scheduler cosineannealinglr --weight-decay 5e-5
    --norm-weight-decay 0 --label-smoothing 0.1 --train-crop-size 128 --val-resize-size 128 --val-crop-size 128
    --workers 12 --print-freq 50"

for f in third_party/*.tgz; do tar xzf $f -C third_party; done
say "start $(date -u +%FT%TZ) deadline ${DEADLINE}s"
nvidia-smi -L | tee -a $OUT/summary.txt
$PY -c "import torch, torchvision, sys; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'python', sys.version.split()[0])" | tee -a $OUT/summary.txt
LAST=120
step r5-s0 60 200 $PY train.py $R5 --seed 0 --output $R/r5-s0
T5=$LAST
step synth 80 150 $PY bench.py synthetic --modes fp32 bf16 bf16-cl --res 224 176
step tvref5 $(( 2 * T5 )) 400 $PY $TVREF --output-dir $R/tvref5
step r5-s1 $(( T5 + 10 )) 200 $PY train.py $R5 --seed 1 --output $R/r5-s1
step r5-s2 $(( T5 + 10 )) 200 $PY train.py $R5 --seed 2 --output $R/r5-s2
step tv5-s0 $(( T5 + 10 )) 200 $PY train.py $R5 --seed 0 --model tv_resnet50 --output $R/tv5-s0
step jpeg 80 150 $PY bench.py jpeg --images third_party/samples --workers 15 --repeat 340 --res 224 176
step reference 70 150 $PY bench.py reference --images third_party/samples --workers 15 --repeat 340 --res 224
step r20-s0 $(( 4 * T5 + 10 )) 500 $PY train.py $R20 --seed 0 --output $R/r20-s0
step compile 150 200 $PY bench.py synthetic --modes compile --res 224
step pytest 120 200 $PY -m pytest test_model.py -q -p no:cacheprovider
step r5-s3 $(( T5 + 10 )) 200 $PY train.py $R5 --seed 3 --output $R/r5-s3
step r5-s4 $(( T5 + 10 )) 200 $PY train.py $R5 --seed 4 --output $R/r5-s4
say "end $(date -u +%FT%TZ) after $(( $(date +%s) - T0 ))s"
tar czf $OUT/logs.tgz -C $L .
