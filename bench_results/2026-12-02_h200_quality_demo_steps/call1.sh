#!/bin/bash
# Session 28, call 1 (issues 12, 13). First, alone on the GPU: profile_steps.py stage1 of what landed (kernel
# tables of `best` at 512 px with the packed renderer's parts as ranges, a diagnosis). Then the demo's quality
# with longer NeRF runs: VSD, 4 prompts x seeds 0-2, one process per prompt x seed x setting, all sharing the GPU.
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
timeout 110 python3 bench_results/2026-12-02_h200_profile_replay/profile_steps.py stage1 > $R/profile_stage1.txt 2>&1
echo "profile rc=$? at ${SECONDS}s"
LIMIT=$((560 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
for setting in "s300m120 300 120" "s300m80 300 80" "s400m160 400 160"; do
  set -- $setting
  for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
    for seed in 0 1 2; do
      run ${1}_s${seed}_${p// /_} --prompts "$p" --guidances vsd --seed $seed --diversity-prompt "" \
        --set "{\"nerf\": {\"steps\": $2, \"resolution_milestones\": [$3]}}"
    done
  done
done
wait
for d in /tmp/q/*_s0_*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/.*||'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
cat $R/rc.txt | awk '{print $NF}' | sort | uniq -c
grep -l "Error\|Traceback" /tmp/q/*.log | head
grep -h "seconds" $R/*.json | head -3
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
