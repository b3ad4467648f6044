#!/bin/bash
# Session 30, call 3 (issue 13): the demo's quality with VSD for seeds 3-5, prior U1 (.gpu/toyU1) and the bundled
# prior side by side, one process per part. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=$((400 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json --diversity-prompt "" "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  for seed in 3 4 5; do
    run bundled_vsd_s${seed}_$s --prompts "$p" --guidances vsd --seed $seed
    run toyU1_vsd_s${seed}_$s --model .gpu/toyU1 --prompts "$p" --guidances vsd --seed $seed
  done
done
wait
for d in /tmp/q/*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
awk '{print $2}' $R/rc.txt | sort | uniq -c
for f in $R/*_s[0-9]_*.json; do python3 -c "
import json; d=json.load(open('$f')); r=d['runs'][0]; print('$(basename $f .json)', r['silhouette_iou'], r['chamfer'], r['colour_ok'])"; done
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
