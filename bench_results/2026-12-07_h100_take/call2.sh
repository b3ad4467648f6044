#!/bin/bash
# Session 33, call 2 (issue 12): the MLP outputs' take by advanced indexing. Its GPU tests (the packed renderer, the
# replay); stage 1 with the reference, `best` and `best` without channels-last (the UNet in NCHW, now that its group
# norms keep either layout) side by side in one process per field; then the landed backend (68a7b48, `git archive`
# into .gpu/old) with `best` alone, one process per field, right after. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
OMP_NUM_THREADS=4 timeout 100 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider tests/test_packed_render.py \
  tests/test_nerf_render.py tests/test_mlp.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; tail -1 $R/tests.txt; grep -E "^(FAILED|ERROR)|^E " $R/tests.txt | head -10
NCHW=bf16,tf32,sdpa,vae-matmul,vae-norm,unet-norm,batch,fused-adam,graphs,overlap,lora-kernels
for F in solid blob; do
  timeout 130 python3 -m prolific bench stage1 --compare --opt best --opt $NCHW --resolutions 64,512 --steps 8 \
    --warmup 3 --field $F --json $R/stage1_$F.json > $R/stage1_$F.log 2>&1
  echo "stage1 $F rc=$? at ${SECONDS}s"
  PYTHONPATH=/tmp/site:$PWD/.gpu/old/backend timeout 70 python3 -m prolific bench stage1 --opt best \
    --resolutions 64,512 --steps 8 --warmup 3 --field $F --json $R/stage1_${F}_landed.json > $R/stage1_${F}_landed.log 2>&1
  echo "stage1 $F landed rc=$? at ${SECONDS}s"
done
grep -h "ms/step\|speed-up\|eagerly\|Error" $R/stage*.log
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
