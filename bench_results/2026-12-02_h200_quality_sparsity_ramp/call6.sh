#!/bin/bash
# Session 29, call 6 (issue 13): the demo's 200-step NeRF with a stronger opacity BCE (3000, not 1000), an earlier
# one (from 20% of the steps, not 40%), and both; VSD, 4 prompts x seeds 0-2, one
# process per prompt x seed x setting, all sharing the GPU; each setting merged with `bench quality --merge`.
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; rm -rf /tmp/q; mkdir -p $R /tmp/q
LIMIT=$((330 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
SETTINGS=(
  'b3000 {"nerf": {"opacity_weight": 3000}}'
  's02 {"nerf": {"opacity_start_fraction": 0.2}}'
  's02b3000 {"nerf": {"opacity_start_fraction": 0.2, "opacity_weight": 3000}}'
)
for setting in "${SETTINGS[@]}"; do
  name=${setting%% *}; json=${setting#* }
  for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
    for seed in 0 1 2; do
      run ${name}_s${seed}_${p// /_} --prompts "$p" --guidances vsd --seed $seed --diversity-prompt "" --set "$json"
    done
  done
done
wait
echo "quality done at ${SECONDS}s"
cat $R/rc.txt | awk '{print $NF}' | sort | uniq -c
grep -l "Error\|Traceback" /tmp/q/*.log | head
for setting in "${SETTINGS[@]}"; do
  name=${setting%% *}
  python3 -m prolific bench quality --merge $R/${name}_s*.json --json $R/${name}_vsd.json > /dev/null 2>&1
  python3 - $R/${name}_vsd.json <<'PY'
import json, sys, collections
d = json.load(open(sys.argv[1])); s = d["summary"]["vsd"]; per = collections.defaultdict(list)
for r in d["runs"]:
    per[r["prompt"].split()[-1]].append(r["silhouette_iou"])
print(sys.argv[1].split("/")[-1], "IoU %.3f Chamfer %.3f colour %.2f" % (s["silhouette_iou"], s["chamfer"], s["colour_accuracy"]),
      " ".join("%s %s" % (k, "/".join("%.2f" % v for v in vs)) for k, vs in per.items()))
PY
done
mkdir -p $R/parts; mv $R/*_s[0-9]_*.json $R/parts/
for d in /tmp/q/*_s0_*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/.*||'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
