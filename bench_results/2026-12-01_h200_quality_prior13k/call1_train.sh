#!/bin/bash
# Call 1 (issue 13): fine-tune the bundled prior on the data with oversized uncaptioned objects, then its check and
# size probe. Checkpoints and the export go under /tmp; the export comes back split in parts under 15 MiB.
set -u
source .gpu/lite.sh
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
timeout 500 python3 -m prolific.toy.train --out /tmp/toy --work /tmp/work --init-from backend/prolific/models/toy \
  --lr 1e-3 --minutes ${MIN:-7.3} --steps 60000 --total-minutes ${TOTAL:-36} --warmup 100 --log-every 250 2>&1 \
  | grep -v -i "warn\|Writing model\|Loading weights" | tee $OUT/train.log
tar czf /tmp/toy.tgz -C /tmp toy && split -b 15m /tmp/toy.tgz $OUT/toy.tgz.part_
R=/tmp/r; mkdir -p $R
( timeout 80 python3 -m prolific.toy.size_probe --model /tmp/toy --views 64 --json $R/size_probe_new.json > $R/size_probe_new.log 2>&1 ) &
( timeout 80 python3 -m prolific.toy.size_probe --model .gpu/old_toy --views 64 --json $R/size_probe_old.json > $R/size_probe_old.log 2>&1 ) &
for g in 1 2; do
  ( timeout 80 python3 -m prolific.toy.check --model /tmp/toy --guidance $g --out $R/check_g$g.json --grid $R/check_g$g.png > $R/check_g$g.log 2>&1 ) &
done
wait
grep -h "settles" $R/size_probe_*.log; tail -n 3 $R/check_g*.log
tar czf $OUT/results.tgz -C /tmp r; ls -la $OUT
