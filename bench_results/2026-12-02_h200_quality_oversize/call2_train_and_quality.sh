#!/bin/bash
# Session 24, call 2 (issue 13): fine-tune the bundled prior twice in parallel on data with a smaller oversized
# share (A: 3%, scales 1.3-2.2) or larger oversized objects only (B: 5%, scales 1.6-2.2); then each one's size
# probe and check, and the demo quality (VSD, 4 prompts, seeds 0 and 1) for both, one process per part.
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
train() { local name=$1; shift
  timeout 360 python3 -m prolific.toy.train --out /tmp/$name --work /tmp/work_$name --init-from backend/prolific/models/toy \
    --lr 1e-3 --minutes ${MIN:-5.2} --steps 60000 --total-minutes ${TOTAL:-34} --warmup 100 --log-every 250 "$@" 2>&1 \
    | grep -v -i "warn\|Writing model\|Loading weights\|torch_dtype" > $R/train_$name.log; }
train toyA --oversize 0.03 --oversize-scale 1.3,2.2 &
train toyB --oversize 0.05 --oversize-scale 1.6,2.2 &
wait
tail -n 2 $R/train_toy*.log
for m in toyA toyB; do tar czf /tmp/$m.tgz -C /tmp $m && split -b 15m /tmp/$m.tgz $OUT/$m.tgz.part_; done
echo "trained at ${SECONDS}s"
LIMIT=$((585 - SECONDS - 15))
for m in toyA toyB; do
  ( timeout $LIMIT python3 -m prolific.toy.size_probe --model /tmp/$m --views 64 --json $R/size_probe_$m.json > $R/size_probe_$m.log 2>&1 ) &
  ( timeout $LIMIT python3 -m prolific.toy.check --model /tmp/$m --guidance 1 --out $R/check_$m.json --grid $R/check_$m.png > $R/check_$m.log 2>&1 ) &
  for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
    for seed in 0 1; do
      name=${m}_vsd_s${seed}_${p// /_}
      ( timeout $LIMIT python3 -m prolific bench quality --model /tmp/$m --preset demo --device cuda --out /tmp/q/$name \
          --json $R/$name.json --prompts "$p" --guidances vsd --seed $seed --diversity-prompt "" > /tmp/q/$name.log 2>&1
        echo "$name rc=$?" >> $R/rc.txt ) &
    done
  done
done
wait
for d in /tmp/q/*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
grep -h settles $R/size_probe_*.log; tail -n 2 $R/check_*.log
awk '{print $2}' $R/rc.txt | sort | uniq -c
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
