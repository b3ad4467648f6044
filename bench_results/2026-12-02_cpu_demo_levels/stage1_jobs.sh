#!/bin/bash
cd "$(git rev-parse --show-toplevel)"
one() { local p=$1 s=$2; local n=${p// /_}_s$s
  OMP_NUM_THREADS=1 timeout 900 .venv/bin/python -m prolific generate "$p" -o /tmp/s24q --preset demo --seed $s --name $n --device cpu --stages nerf --quiet > /tmp/s24q/$n.log 2>&1; echo "$n rc=$?" >> /tmp/s24q/rc.txt; }
for s in 0 1 2; do
  one "a red cube" $s & one "a green cone" $s; wait
  one "a blue torus" $s & one "a yellow snowman" $s; wait
done
echo ALLDONE >> /tmp/s24q/rc.txt
