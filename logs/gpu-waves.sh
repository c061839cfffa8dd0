# Sourced (not run) by logs/gpu-nette20-screen.sh and logs/gpu-ranger-seeds.sh: runs the entries of RUNS
# ("tag|flags") PARALLEL at a time, as `$PY $PROGRAM flags --output $R/tag`, each killed at DEADLINE seconds after T0
# (SIGTERM: train.py saves last.pt; the log shows how far it got). A wave starts only while the deadline leaves it
# as long as the wave before took. Needs PY, PROGRAM, LAST_EPOCH, DEADLINE, PARALLEL, T0, L (logs), R (runs), OUT.
say() { echo "$*" | tee -a $OUT/summary.txt; }
run_one() {  # tag flags...
  local tag=$1; shift
  local s=$(date +%s)
  PYTHONPATH=. timeout -k 10 $(( DEADLINE - (s - T0) )) $PY $PROGRAM "$@" --output $R/$tag > $L/$tag.log 2>&1
  say "DONE $tag rc=$? $(( $(date +%s) - s ))s | $(grep -E "^epoch $LAST_EPOCH  " $L/$tag.log | grep -oE 'val_top1 [0-9.]+  val_top5 [0-9.]+') | $*"
  tar czf $OUT/.logs-$tag.tgz -C $L . && mv $OUT/.logs-$tag.tgz $OUT/logs.tgz  # runs end concurrently: no torn tar
}
run_waves() {
  local NEED=0 i=0 k left wave
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
}
