#!/bin/bash
# The demo's stage 1 at 300 NeRF steps (milestone 120) for the 4 quality prompts x seeds 0-2, one thread each, two
# at a time, on the 2-core CPU: the NeRFs that levels.py re-extracts.
cd "$(git rev-parse --show-toplevel)"
one() { local p=$1 s=$2; local n=${p// /_}_s$s
  OMP_NUM_THREADS=1 timeout 1200 .venv/bin/python -m prolific generate "$p" -o /tmp/s28q --preset demo --seed $s --name $n \
    --device cpu --stages nerf --quiet --set nerf.steps=300 --set 'nerf.resolution_milestones=[120]' \
    > /tmp/s28q/$n.log 2>&1; echo "$n rc=$?" >> /tmp/s28q/rc.txt; }
for s in 0 1 2; do
  one "a red cube" $s & one "a green cone" $s; wait
  one "a blue torus" $s & one "a yellow snowman" $s; wait
done
echo ALLDONE >> /tmp/s28q/rc.txt
