#!/bin/bash
# Session 29, call 1 (issue 13): the demo's NeRF at 300 steps (64 px from 120) with the sparsity weight on a
# linear ramp (nerf.sparsity_end_weight), against the opacity BCE switched off; VSD, 4 prompts x seeds 0-2, one
# process per prompt x seed x setting, all sharing the GPU; each setting merged with `bench quality --merge`.
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=$((540 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
SETTINGS=(
  'r100 {"nerf": {"steps": 300, "resolution_milestones": [120], "sparsity_end_weight": 100}}'
  'r0 {"nerf": {"steps": 300, "resolution_milestones": [120], "sparsity_end_weight": 0}}'
  'nobce {"nerf": {"steps": 300, "resolution_milestones": [120], "opacity_weight": 0}}'
  'r100s250 {"nerf": {"steps": 250, "resolution_milestones": [100], "sparsity_end_weight": 100}}'
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
