#!/bin/bash
# Session 30, call 1 (issue 13): fine-tune the bundled prior twice in parallel with smaller-than-life objects
# under the empty caption beside its oversized ones (U1: 5% at scales 0.5-0.8, U2: 10%), each one's size probe
# and check; then the demo's quality for seed 0 (VSD, 4 prompts) with U1, U2 and the bundled prior, one process
# per part. The models come back split in parts under 15 MiB. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q .gpu
train() { local name=$1; shift
  timeout 360 python3 -m prolific.toy.train --out /tmp/$name --work /tmp/work_$name --init-from backend/prolific/models/toy \
    --lr 1e-3 --minutes 5.2 --steps 60000 --total-minutes 40 --warmup 100 --log-every 250 "$@" 2>&1 \
    | grep -v -i "warn\|Writing model\|Loading weights\|torch_dtype" > $R/train_$name.log; }
train toyU1 --undersize 0.05 --undersize-scale 0.5,0.8 &
train toyU2 --undersize 0.10 --undersize-scale 0.5,0.8 &
wait
tail -n 2 $R/train_toy*.log
for m in toyU1 toyU2; do
  rm -rf .gpu/$m && cp -r /tmp/$m .gpu/$m
  tar czf /tmp/$m.tgz -C /tmp $m && split -b 15m /tmp/$m.tgz $OUT/$m.tgz.part_
done
echo "trained at ${SECONDS}s"
LIMIT=$((580 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json --diversity-prompt "" "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
for m in toyU1 toyU2; do
  ( timeout $LIMIT python3 -m prolific.toy.size_probe --model .gpu/$m --views 64 --json $R/size_probe_$m.json > $R/size_probe_$m.log 2>&1 ) &
  ( timeout $LIMIT python3 -m prolific.toy.check --model .gpu/$m --guidance 1 --out $R/check_$m.json --grid $R/check_$m.png > $R/check_$m.log 2>&1 ) &
done
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  run bundled_vsd_s0_$s --prompts "$p" --guidances vsd --seed 0
  for m in toyU1 toyU2; do run ${m}_vsd_s0_$s --model .gpu/$m --prompts "$p" --guidances vsd --seed 0; done
done
wait
for d in /tmp/q/*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
grep -h -i "settle\|balance" $R/size_probe_*.log | head -20; tail -n 3 $R/check_*.log
awk '{print $2}' $R/rc.txt | sort | uniq -c
for f in $R/*_vsd_s0_*.json; do python3 -c "
import json,sys; d=json.load(open('$f')); r=d['runs'][0]; print('$(basename $f .json)', r['silhouette_iou'], r['chamfer'], r['colour_ok'])"; done
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
