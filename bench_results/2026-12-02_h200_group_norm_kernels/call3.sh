#!/bin/bash
# Session 26, call 3 (issue 12), alone on the GPU: the group-norm kernels with their channel and pixel strides
# specialised (coalesced tiles). Stage 1 (with the reference), stage 3 and stage 2: `best` against `best` without
# vae-norm and unet-norm, side by side in one process each; then the kernels' and the norms' GPU tests.
# Carry [".whl", ".gpu"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
NO_NORM=bf16,tf32,sdpa,channels-last,vae-matmul,batch,fused-adam,graphs,overlap
timeout 150 python3 -m prolific bench stage1 --compare --opt best --opt $NO_NORM --resolutions 64,512 --steps 8 \
  --warmup 3 --json $R/stage1.json > $R/stage1.log 2>&1; echo "stage1 rc=$? at ${SECONDS}s"
for s in stage3 stage2; do
  timeout 80 python3 -m prolific bench $s --opt best --opt $NO_NORM --steps 8 --warmup 3 --json $R/$s.json \
    > $R/$s.log 2>&1; echo "$s rc=$? at ${SECONDS}s"
done
grep -h "ms/step\|speed-up\|eagerly\|Error" $R/stage*.log
echo "benches done at ${SECONDS}s"
OMP_NUM_THREADS=4 timeout $((470 - SECONDS)) python3 -m pytest -v -rfs --tb=short -p no:cacheprovider \
  tests/test_group_norms.py tests/test_kernels.py > $R/tests.txt 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|SKIPPED" $R/tests.txt | tail -12
grep -E "^E " $R/tests.txt | head -10
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
