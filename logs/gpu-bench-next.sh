#!/bin/bash
# Prepared 2026-11-30 (fifth session, no GPU lent) for the next session lent a GPU: the speed issue's missing figures
# (BENCHMARKS.md, "GPU figures": JPEG and reference rows with the corrected timing, all 300 photos, compile rows).
# Run on the device machine from the repository root, carrying only what it needs (about 31 MB):
#   carry ["third_party/samples300.tgz", "third_party/vision_ref"]
#   DEADLINE=540 bash logs/gpu-bench-next.sh
# samples300.tgz: all 300 ../shared/data/imagenet-samples photos (tar czf third_party/samples300.tgz -C <parent of a
# copy named samples300> samples300); vision_ref: torchvision's references/classification at upstream 428a54c9.
# Each step runs only if its time is left before DEADLINE, under its own timeout; logs go to $OUT/logs.tgz after
# every step, one summary line per step to stdout and $OUT/summary.txt. Compile rows last: their time is unknown.
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; DEADLINE=${DEADLINE:-540}
T0=$(date +%s); L=/tmp/glogs; mkdir -p $L
left() { echo $(( DEADLINE - ($(date +%s) - T0) )); }
say() { echo "$*" | tee -a $OUT/summary.txt; }
step() {  # step NAME NEED_S TIMEOUT_S command...
  local name=$1 need=$2 to=$3; shift 3
  if [ "$(left)" -lt "$need" ]; then say "SKIP $name: $(left) s left < $need"; return 1; fi
  [ "$(left)" -lt "$to" ] && to=$(left)
  local s=$(date +%s)
  echo "\$ $*" > $L/$name.log
  timeout -k 5 $to "$@" >> $L/$name.log 2>&1
  say "DONE $name rc=$? $(( $(date +%s) - s ))s"
  grep -E '^(data|JPEG|synthetic)' $L/$name.log | tee -a $OUT/summary.txt
  tar czf $OUT/logs.tgz -C $L .
}
tar xzf third_party/samples300.tgz -C third_party
S=third_party/samples300
say "start $(date -u +%FT%TZ) deadline ${DEADLINE}s, $(ls $S | wc -l) classes, $(find $S -type f | wc -l) photos"
nvidia-smi -L | tee -a $OUT/summary.txt
$PY -c "import torch, torchvision, sys; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'python', sys.version.split()[0])" | tee -a $OUT/summary.txt
step jpeg224 90 150 $PY bench.py jpeg --images $S --workers 15 --res 224
step reference224 70 120 $PY bench.py reference --images $S --workers 15 --res 224
step jpeg176 90 150 $PY bench.py jpeg --images $S --workers 15 --res 176
step compile224 120 240 $PY bench.py synthetic --modes bf16-cl compile --res 224
step autotune224 150 300 $PY bench.py synthetic --modes max-autotune --res 224
say "end $(date -u +%FT%TZ) after $(( $(date +%s) - T0 ))s"
