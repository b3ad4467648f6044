#!/bin/bash
# Call 2 (issue 13): the quality benchmark with the retrained prior (bundled) against the one before (.gpu/old_toy),
# demo preset, one process per (prompt, guidance, seed), merged afterwards with `prolific bench quality --merge`.
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=${LIMIT:-480}
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name --json $R/$name.json "$@" > /tmp/q/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run new_div --prompts "" --guidances vsd,sds
for m in new old; do
  M=backend/prolific/models/toy; [ $m = old ] && M=.gpu/old_toy
  ( timeout $LIMIT python3 -m prolific.toy.size_probe --model $M --views 64 --json $R/size_probe_$m.json > $R/size_probe_$m.log 2>&1 ) &
done
for g in 1 2; do
  ( timeout $LIMIT python3 -m prolific.toy.check --guidance $g --out $R/check_g$g.json --grid $R/check_g$g.png > $R/check_g$g.log 2>&1 ) &
done
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  for seed in 0 1 2; do
    for g in vsd sds; do run new_${g}_s${seed}_$s --prompts "$p" --guidances $g --seed $seed --diversity-prompt ""; done
  done
  for seed in 0 1; do
    run old_vsd_s${seed}_$s --model .gpu/old_toy --prompts "$p" --guidances vsd --seed $seed --diversity-prompt ""
    run new10_vsd_s${seed}_$s --prompts "$p" --guidances vsd --seed $seed --diversity-prompt "" --set '{"nerf": {"sparsity_weight": 10.0}}'
  done
done
wait
for d in /tmp/q/*/*/object_*; do
  n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
tail -n 3 /tmp/q/new_div.log > $R/new_div.tail
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader > $R/gpu.txt
grep -h settles $R/size_probe_*.log; tail -n 2 $R/check_g*.log
sort $R/rc.txt | awk '{print $2}' | sort | uniq -c
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
