#!/bin/bash
# Session 28, call 3 (issue 13): the demo preset of this tree (300 NeRF steps, 64 px from 120, the surface at
# 0.35x the auto level): VSD and SDS, 4 prompts x seeds 0-2, one process each, the diversity study as two
# processes, and VSD at 0.25x as well; all sharing the GPU. Then, alone: the demo end to end twice (the first
# process compiles the kernels). Carry [".whl", ".gpu"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=$((400 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run diversity_vsd --prompts "" --guidances vsd
run diversity_sds --prompts "" --guidances sds
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  for seed in 0 1 2; do
    for g in vsd sds; do run ${g}_s${seed}_${p// /_} --prompts "$p" --guidances $g --seed $seed --diversity-prompt ""; done
    run l025_s${seed}_${p// /_} --prompts "$p" --guidances vsd --seed $seed --diversity-prompt "" \
      --set '{"geometry": {"auto_level_scale": 0.25}}'
  done
done
wait
echo "quality done at ${SECONDS}s"
for d in /tmp/q/vsd_s0*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/.*||'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
for name in demo_first demo_second; do
  timeout 90 python3 -m prolific generate "a red cube" -o /tmp/e2e --name $name --preset demo --device cuda --quiet \
    > $R/e2e_$name.log 2>&1
  echo "$name rc=$?: $(python3 -c "import json; print(json.load(open('/tmp/e2e/$name/meta.json'))['timings'])" 2>&1)"
done | tee $R/e2e.txt
cat $R/rc.txt | awk '{print $NF}' | sort | uniq -c
grep -l "Error\|Traceback" /tmp/q/*.log | head
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
