#!/bin/bash
# Session 28, call 2 (issue 12): the density rounds decide each round's kept samples when it ends (one gather of
# the kept values per density chunk, rounds built from the lit rays only) against the landed backend
# (.gpu/landed = git archive b2742de backend). Stage 1 with the reference and `best` side by side, the landed
# backend's `best`; the GPU tests of the changed paths; then profile_steps.py stage1 (a diagnosis).
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
LANDED="env PYTHONPATH=/tmp/site:$PWD/.gpu/landed/backend"
timeout 150 python3 -m prolific bench stage1 --compare --opt best --resolutions 64,512 --steps 8 --warmup 3 \
  --json $R/stage1.json > $R/stage1.log 2>&1; echo "stage1 rc=$? at ${SECONDS}s"
$LANDED timeout 80 python3 -m prolific bench stage1 --opt best --resolutions 64,512 --steps 8 --warmup 3 \
  --json $R/stage1_landed.json > $R/stage1_landed.log 2>&1; echo "stage1 landed rc=$? at ${SECONDS}s"
grep -h "ms/step\|speed-up\|eagerly\|Error\|peak" $R/stage*.log
OMP_NUM_THREADS=4 timeout 200 python3 -m pytest -v -rfs --tb=short -p no:cacheprovider \
  tests/test_kernels.py tests/test_packed_render.py tests/test_nerf_render.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; grep -E "FAILED|ERROR|passed|failed" $R/tests.txt | tail -8
grep -E "^E " $R/tests.txt | head -10
timeout $((540 - SECONDS)) python3 bench_results/2026-12-02_h200_profile_replay/profile_steps.py stage1 \
  > $R/profile_stage1.txt 2>&1; echo "profile rc=$? at ${SECONDS}s"
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
