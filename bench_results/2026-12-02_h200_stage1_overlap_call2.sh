#!/bin/bash
# Session 25, call 2 (issue 12). Part 1, alone on the GPU: stage 1 (with the reference) and stage 3, `best` against
# `best` without `overlap` side by side in one process each; stage 2 with `best`. Part 2: the whole test suite
# (8 workers). Carry [".whl", ".gpu", "wheels"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
NO_OVERLAP=bf16,tf32,sdpa,channels-last,vae-matmul,batch,fused-adam,graphs
timeout 150 python3 -m prolific bench stage1 --compare --opt best --opt $NO_OVERLAP --resolutions 64,512 --steps 8 \
  --warmup 3 --json $R/stage1.json > $R/stage1.log 2>&1; echo "stage1 rc=$?"
timeout 80 python3 -m prolific bench stage3 --opt best --opt $NO_OVERLAP --steps 8 --warmup 3 --json $R/stage3.json \
  > $R/stage3.log 2>&1; echo "stage3 rc=$?"
timeout 60 python3 -m prolific bench stage2 --opt best --steps 8 --warmup 3 --json $R/stage2.json > $R/stage2.log 2>&1
echo "stage2 rc=$?"
grep -h "ms/step\|speed-up\|rasterizer" $R/stage*.log
echo "benches done at ${SECONDS}s"
timeout $((585 - SECONDS)) python3 -m pytest -q -n 8 -rfs --tb=short -p no:cacheprovider tests > $R/tests.txt 2>&1
echo "tests rc=$?"; tail -n 40 $R/tests.txt
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
