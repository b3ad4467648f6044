#!/bin/bash
# Session 25, call 1. Part 1 (issue 12, alone on the GPU): stage 1/2/3 benches with `best`, the last landed code
# (d7cb494, .gpu/old_backend) then this tree (no host waits on the loss's figures or between bench steps).
# Part 2 (issue 13): the demo's quality with the auto level, 4 prompts x seeds 0-2, VSD and SDS, one process
# each, and the diversity study. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
NEW=$PYTHONPATH
OLD=/tmp/site:$PWD/.gpu/old_backend
for code in old new; do
  if [ $code = old ]; then export PYTHONPATH=$OLD; else export PYTHONPATH=$NEW; fi
  timeout 100 python3 -m prolific bench stage1 --opt best --resolutions 64,512 --steps 8 --warmup 3 \
    --json $R/stage1_$code.json > $R/stage1_$code.log 2>&1; echo "stage1 $code rc=$?"
  for s in stage2 stage3; do
    timeout 80 python3 -m prolific bench $s --opt best --steps 8 --warmup 3 --json $R/${s}_$code.json > $R/${s}_$code.log 2>&1
    echo "$s $code rc=$?"
  done
done
export PYTHONPATH=$NEW
grep -h "ms/step" $R/stage*.log
echo "benches done at ${SECONDS}s"
LIMIT=$((570 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run diversity_vsd --prompts "" --guidances vsd
run diversity_sds --prompts "" --guidances sds
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  for seed in 0 1 2; do
    for g in vsd sds; do run ${g}_s${seed}_${p// /_} --prompts "$p" --guidances $g --seed $seed --diversity-prompt ""; done
  done
done
wait
for d in /tmp/q/*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
tail -n 2 /tmp/q/diversity_*.log
awk '{print $2}' $R/rc.txt | sort | uniq -c
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
