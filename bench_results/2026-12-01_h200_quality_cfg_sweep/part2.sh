#!/bin/bash
# Guidance sweep of the quality benchmark with the new toy prior: VSD at CFG 3, 5, 7.5 and SDS at CFG 10, 30.
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R /tmp/q4
LIMIT=${LIMIT:-250}
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q4/$name --json $R/$name.json "$@" > $R/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  for g in 3 5 7.5; do
    run vsd${g}_$s --prompts "$p" --guidances vsd --diversity-prompt "" --set "{\"prior\": {\"guidance_scale\": $g}}"
  done
  for g in 10 30; do
    run sds${g}_$s --prompts "$p" --guidances sds --diversity-prompt "" --set "{\"prior\": {\"sds_guidance_scale\": $g}}"
  done
done
wait
for d in /tmp/q4/*/*/object_*; do
  n=$(echo $d | sed 's|/tmp/q4/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
sort $R/rc.txt
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
