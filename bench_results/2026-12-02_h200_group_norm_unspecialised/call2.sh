#!/bin/bash
# Session 26, call 2 (issue 12), alone on the GPU. Benches: stage 1 (with the reference), stage 3 and stage 2 with
# `best` (now with vae-norm and unet-norm), `best` without unet-norm and `best` without either, side by side in one
# process each; stage 2 also with 193c03b's backend (.gpu/old_backend: the mesh step's host waits). Then the GPU
# tests of the changed paths; with time left, .gpu/profile_steps.py's kernel tables (a diagnosis).
# Carry [".whl", ".gpu"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
NEW=$PYTHONPATH
NO_NORM=bf16,tf32,sdpa,channels-last,vae-matmul,batch,fused-adam,graphs,overlap
VAE_NORM=$NO_NORM,vae-norm
timeout 200 python3 -m prolific bench stage1 --compare --opt best --opt $VAE_NORM --opt $NO_NORM --resolutions 64,512 --steps 8 \
  --warmup 3 --json $R/stage1.json > $R/stage1.log 2>&1; echo "stage1 rc=$? at ${SECONDS}s"
for s in stage3 stage2; do
  timeout 100 python3 -m prolific bench $s --opt best --opt $VAE_NORM --opt $NO_NORM --steps 8 --warmup 3 --json $R/$s.json \
    > $R/$s.log 2>&1; echo "$s rc=$? at ${SECONDS}s"
done
PYTHONPATH=/tmp/site:$PWD/.gpu/old_backend timeout 60 python3 -m prolific bench stage2 --opt best --steps 8 --warmup 3 \
  --json $R/stage2_193c03b.json > $R/stage2_193c03b.log 2>&1; echo "stage2 old rc=$? at ${SECONDS}s"
grep -h "ms/step\|speed-up\|rasterizer\|eagerly\|Error" $R/stage*.log
echo "benches done at ${SECONDS}s"
OMP_NUM_THREADS=4 timeout $((585 - SECONDS)) python3 -m pytest -v -rfs --tb=short -p no:cacheprovider \
  tests/test_kernels.py tests/test_group_norms.py tests/test_graphs.py tests/test_speed.py tests/test_dmtet.py \
  tests/test_mesh_stages.py > $R/tests.txt 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|SKIPPED" $R/tests.txt | grep -v "PASSED" | tail -30
tail -n 3 $R/tests.txt
for part in stage1 stage2; do
  if [ $SECONDS -lt 500 ]; then
    timeout $((580 - SECONDS)) python3 .gpu/profile_steps.py $part > $R/profile_$part.txt 2>&1; echo "profile $part rc=$?"
  fi
done
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
