#!/bin/bash
# Session 24, call 3 (issue 13): prior B (.gpu/toyB: 5% oversized at scales 1.6-2.2), the demo's quality at
# sparsity 500 (seed 2, completing seeds 0-2 with call 2), 150 and 50 for VSD (seeds 0-2), and SDS at 500 (seeds
# 0-2), one process per (prompt, guidance, sparsity, seed). Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=$((470 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --model .gpu/toyB --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json --diversity-prompt "" "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  run vsd_sp500_s2_$s --prompts "$p" --guidances vsd --seed 2
  for seed in 0 1 2; do
    run sds_sp500_s${seed}_$s --prompts "$p" --guidances sds --seed $seed
    for w in 150 50; do
      run vsd_sp${w}_s${seed}_$s --prompts "$p" --guidances vsd --seed $seed --set "{\"nerf\": {\"sparsity_weight\": $w}}"
    done
  done
done
wait
for d in /tmp/q/*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
awk '{print $2}' $R/rc.txt | sort | uniq -c
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
