#!/bin/bash
# Session 26, call 1 (issue 13): the demo's quality at twice the auto level (the landed demo preset, 193c03b),
# 4 prompts x seeds 0-2, VSD and SDS, one process each, and the diversity study; VSD also over seeds 3-5 (more
# seeds for the mean). All processes share the GPU. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=$((580 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run diversity_vsd --prompts "" --guidances vsd
run diversity_sds --prompts "" --guidances sds
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  for seed in 0 1 2; do
    for g in vsd sds; do run ${g}_s${seed}_${p// /_} --prompts "$p" --guidances $g --seed $seed --diversity-prompt ""; done
  done
  for seed in 3 4 5; do run xvsd_s${seed}_${p// /_} --prompts "$p" --guidances vsd --seed $seed --diversity-prompt ""; done
done
wait
for d in /tmp/q/*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
tail -n 2 /tmp/q/diversity_*.log
awk '{print $2}' $R/rc.txt | sort | uniq -c
grep -l "Error\|Traceback" /tmp/q/*.log | head; 
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
