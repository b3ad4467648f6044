#!/bin/bash
# Session 34, call 1 (issue 12). The UNet's transformer blocks keeping NHWC (prior/channels_last.py, part of
# channels-last, so in `best`), and two trial options: cudnn-benchmark, norm-silu (the resnet blocks' norm -> SiLU
# as one kernel). GPU tests of the changed paths; stage 1 with the reference, `best`, `best,cudnn-benchmark` and
# `best,norm-silu` in one process per field, then the landed backend (306e401, `git archive` into .gpu/old) with
# `best` alone right after; stage 3 and 2 with the same three; a profile of `best` at 512 px on the solid ball.
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
OMP_NUM_THREADS=4 timeout 120 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider tests/kernel_cases_norm.py \
  tests/test_channels_last.py tests/test_group_norms.py tests/test_graphs.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; tail -1 $R/tests.txt; grep -E "^(FAILED|ERROR)|^E " $R/tests.txt | head -10
OPTS="--opt best --opt best,cudnn-benchmark --opt best,norm-silu"
for F in solid blob; do
  timeout 150 python3 -m prolific bench stage1 --compare $OPTS --resolutions 64,512 --steps 8 \
    --warmup 3 --field $F --json $R/stage1_$F.json > $R/stage1_$F.log 2>&1
  echo "stage1 $F rc=$? at ${SECONDS}s"
  PYTHONPATH=/tmp/site:$PWD/.gpu/old/backend timeout 70 python3 -m prolific bench stage1 --opt best \
    --resolutions 64,512 --steps 8 --warmup 3 --field $F --json $R/stage1_${F}_landed.json > $R/stage1_${F}_landed.log 2>&1
  echo "stage1 $F landed rc=$? at ${SECONDS}s"
done
for s in stage3 stage2; do
  timeout 70 python3 -m prolific bench $s $OPTS --steps 8 --warmup 3 --json $R/$s.json > $R/$s.log 2>&1
  echo "$s rc=$? at ${SECONDS}s"
done
grep -h "ms/step\|speed-up\|eagerly\|Error" $R/stage*.log
timeout $((590 - SECONDS)) python3 .gpu/profile_512.py solid > $R/profile_solid.txt 2>&1
echo "profile rc=$? at ${SECONDS}s"; grep -A70 "^per step" $R/profile_solid.txt
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
