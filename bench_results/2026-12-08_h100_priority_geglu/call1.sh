#!/bin/bash
# Session 36, call 1 (issue 12): the stage-35 options measured. Stage 1 with the reference, `best`, `best,priority`,
# `best,geglu` and `best,priority,geglu` in one process per field (the solid ball profiled: GPU busy time against
# the wall, per stream), then the backend as landed before stage 35's changes (5ec6782, `git archive` into
# .gpu/old) with `best` alone right after, for the gather and LoRA-kernel changes that `best` took in.
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=/tmp/r; mkdir -p $R
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
OPTS="--opt best --opt best,priority --opt best,geglu --opt best,priority,geglu"
for F in solid blob; do
  P=$([ $F = solid ] && echo --profile)
  timeout 230 python3 -m prolific bench stage1 --compare $OPTS --resolutions 64,512 --steps 8 \
    --warmup 3 --field $F $P --json $R/stage1_$F.json > $R/stage1_$F.log 2>&1
  echo "stage1 $F rc=$? at ${SECONDS}s"
  PYTHONPATH=/tmp/site:$PWD/.gpu/old/backend timeout 70 python3 -m prolific bench stage1 --opt best \
    --resolutions 64,512 --steps 8 --warmup 3 --field $F --json $R/stage1_${F}_landed.json > $R/stage1_${F}_landed.log 2>&1
  echo "stage1 $F landed rc=$? at ${SECONDS}s"
  grep -h "ms/step\|speed-up\|eagerly\|Error" $R/stage1_$F.log $R/stage1_${F}_landed.log
done
cp $R/*.json $OUT/ 2>/dev/null
tar czf $OUT/logs.tgz -C /tmp r; ls -la $OUT
