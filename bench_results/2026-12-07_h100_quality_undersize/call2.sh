#!/bin/bash
# Session 30, call 2 (issue 13): prior U1 (.gpu/toyU1, call 1's fine-tune with 5% undersized objects), the demo's
# quality with VSD for seeds 1-2 and SDS for seeds 0-2, the bundled prior's VSD for seeds 1-2 beside it, and U1's
# diversity study (VSD and SDS), one process per part. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=$((570 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run toyU1_div_vsd --model .gpu/toyU1 --prompts "" --guidances vsd
run toyU1_div_sds --model .gpu/toyU1 --prompts "" --guidances sds
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  for seed in 1 2; do
    run bundled_vsd_s${seed}_$s --prompts "$p" --guidances vsd --seed $seed --diversity-prompt ""
    run toyU1_vsd_s${seed}_$s --model .gpu/toyU1 --prompts "$p" --guidances vsd --seed $seed --diversity-prompt ""
  done
  for seed in 0 1 2; do
    run toyU1_sds_s${seed}_$s --model .gpu/toyU1 --prompts "$p" --guidances sds --seed $seed --diversity-prompt ""
  done
done
wait
for d in /tmp/q/*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
awk '{print $2}' $R/rc.txt | sort | uniq -c
for f in $R/*_s[0-9]_*.json; do python3 -c "
import json; d=json.load(open('$f')); r=d['runs'][0]; print('$(basename $f .json)', r['silhouette_iou'], r['chamfer'], r['colour_ok'])"; done
for f in $R/toyU1_div_*.json; do python3 -c "
import json; d=json.load(open('$f')); print('$(basename $f .json)', json.dumps(d.get('diversity'))[:400])"; done
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
