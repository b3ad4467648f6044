#!/bin/bash
# Call 3 (issue 13): the demo's sparsity weight for the retrained prior (it measured 500 too strong: the torus
# shrank to a blob; 10 too weak: the cube filled the frame once), VSD over 3 seeds, SDS and the diversity study.
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=${LIMIT:-400}
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
for sp in 50 150; do
  SET="{\"nerf\": {\"sparsity_weight\": $sp.0}}"
  run div${sp}_vsd --prompts "" --guidances vsd --set "$SET"
  run div${sp}_sds --prompts "" --guidances sds --set "$SET"
  for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
    s=${p// /_}
    for seed in 0 1 2; do run sp${sp}_vsd_s${seed}_$s --prompts "$p" --guidances vsd --seed $seed --diversity-prompt "" --set "$SET"; done
    run sp${sp}_sds_s0_$s --prompts "$p" --guidances sds --seed 0 --diversity-prompt "" --set "$SET"
  done
done
wait
for d in /tmp/q/*/*/object_*; do
  n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
sort $R/rc.txt | awk '{print $2}' | sort | uniq -c; grep rc=124 $R/rc.txt
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
