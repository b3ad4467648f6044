#!/bin/bash
# Session 27, call 3 (issues 12, 13): the GPU tests of the changed paths (in the background), and the demo's
# quality with this tree (occupancy on σ·step, the density pass replayed, TF32 products in the fused MLP under
# auto): 4 prompts x seeds 0-2, VSD and SDS, one process each, and the diversity study, all sharing the GPU.
# Carry [".whl", ".gpu"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R /tmp/q
( OMP_NUM_THREADS=2 timeout 400 python3 -m pytest -v -rfs --tb=short -p no:cacheprovider tests/test_kernels.py \
    tests/test_packed_render.py tests/test_mlp.py tests/test_nerf_render.py > $R/tests.txt 2>&1
  echo "tests rc=$?" >> $R/rc.txt ) &
LIMIT=$((470 - SECONDS))
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name \
      --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run diversity_vsd --prompts "" --guidances vsd
run diversity_sds --prompts "" --guidances sds
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  for seed in 0 1 2; do
    for g in vsd sds; do run ${g}_s${seed}_${p// /_} --prompts "$p" --guidances $g --seed $seed --diversity-prompt ""; done
  done
done
wait
for d in /tmp/q/vsd_s0*/*/object_*; do n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
tail -n 2 /tmp/q/diversity_*.log
cat $R/rc.txt | awk '{print $NF}' | sort | uniq -c
grep -E "FAILED|ERROR|passed|failed" $R/tests.txt | tail -8; grep -E "^E " $R/tests.txt | head -10
grep -l "Error\|Traceback" /tmp/q/*.log | head
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
