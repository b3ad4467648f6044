#!/bin/bash
# Session 29, call 5 (issue 12): the demo (twice: the first process compiles the kernels) and draft presets end
# to end with `auto`, one after the other on the GPU alone; each job's stage timings from its meta.json.
# Carry [".whl"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
for job in "demo_first demo 90" "demo_second demo 90" "draft draft 300"; do
  set -- $job
  start=$SECONDS
  timeout $3 python3 -m prolific generate "a red cube" -o /tmp/e2e --name $1 --preset $2 --device cuda --quiet \
    > $R/e2e_$1.log 2>&1
  echo "$1 rc=$? in $((SECONDS - start)) s: $(python3 -c "import json; print(json.load(open('/tmp/e2e/$1/meta.json'))['timings'])" 2>&1)"
done | tee $R/e2e.txt
tar czf $OUT/results.tgz -C $OUT r
