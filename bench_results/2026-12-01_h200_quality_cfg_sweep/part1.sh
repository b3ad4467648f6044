#!/bin/bash
# One GPU call: the prior check at four guidance scales and the quality benchmark (VSD at CFG 1 and 2, SDS at the
# demo's settings, the diversity study), one process per part, merged afterwards with `prolific bench quality --merge`.
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=${LIMIT:-330}
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name --json $R/$name.json "$@" > $R/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run div --prompts "" --guidances vsd
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  run vsd2_$s --prompts "$p" --guidances vsd --diversity-prompt ""
  run vsd1_$s --prompts "$p" --guidances vsd --diversity-prompt "" --set '{"prior": {"guidance_scale": 1.0}}'
  run sds_$s --prompts "$p" --guidances sds --diversity-prompt ""
done
for g in 1 1.5 2 3; do
  ( timeout $LIMIT python3 -m prolific.toy.check --guidance $g --out $R/check_g$g.json --grid $R/check_g$g.png > $R/check_g$g.log 2>&1 ) &
done
wait
for d in /tmp/q/*/*/object_*; do
  n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
sort $R/rc.txt; tail -n 1 $R/check_g*.log
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
