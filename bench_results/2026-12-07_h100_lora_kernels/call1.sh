#!/bin/bash
# Session 32, call 1 (issue 12): the LoRA branches as Triton kernels (lora-kernels). Their GPU tests, then stage 1
# with the reference, `best` with and without lora-kernels side by side in one process, on the opaque ball
# (--field solid: a trained object, what 512 px steps see) and on the initialisation blob (the default).
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
OMP_NUM_THREADS=4 timeout 120 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider tests/kernel_cases_lora.py \
  tests/test_graphs.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; grep -E "FAILED|ERROR|passed|failed" $R/tests.txt | tail -8; grep -E "^E " $R/tests.txt | head -10
for F in solid blob; do
  LIMIT=140; [ $F = blob ] && LIMIT=$((400 - SECONDS))
  timeout $LIMIT python3 -m prolific bench stage1 --compare --opt best,lora-kernels --opt best \
    --resolutions 64,512 --steps 8 --warmup 3 --field $F --json $R/stage1_$F.json > $R/stage1_$F.log 2>&1
  echo "stage1 $F rc=$? at ${SECONDS}s"
  grep -h "ms/step\|speed-up\|eagerly\|Error" $R/stage1_$F.log
done
timeout 40 python3 bench_results/2026-12-07_h100_lora_kernels/gather_probe.py > $R/gather_probe.txt 2>&1; cat $R/gather_probe.txt
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
