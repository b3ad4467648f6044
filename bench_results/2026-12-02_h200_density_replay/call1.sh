#!/bin/bash
# Session 27, call 1 (issue 12): the fused MLP's tilings and precisions (sweep.py, a diagnosis); stage 1 with
# `best` at 64 and 512 px, this tree (occupancy on σ·step, the density pass replayed, the MLP backward's weights
# hoisted) and then the landed backend (.gpu/landed = git archive HEAD backend), one process each; the GPU tests
# of the changed paths; profile_steps.py stage1 (kernel tables of `best` at 512, a diagnosis) between. Carry [".whl", ".gpu"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
timeout 170 python3 bench_results/2026-12-02_h200_mlp_sweep/sweep.py > $R/sweep.txt 2>&1; echo "sweep rc=$? at ${SECONDS}s"
timeout 130 python3 -m prolific bench stage1 --opt best --resolutions 64,512 --steps 8 --warmup 3 \
  --json $R/stage1_new.json > $R/stage1_new.log 2>&1; echo "stage1 new rc=$? at ${SECONDS}s"
PYTHONPATH=/tmp/site:$PWD/.gpu/landed/backend timeout 130 python3 -m prolific bench stage1 --opt best \
  --resolutions 64,512 --steps 8 --warmup 3 --json $R/stage1_landed.json > $R/stage1_landed.log 2>&1
echo "stage1 landed rc=$? at ${SECONDS}s"
grep -h "ms/step\|eagerly\|Error" $R/stage1_*.log
timeout 100 python3 bench_results/2026-12-02_h200_group_norm_unspecialised/profile_steps.py stage1 \
  > $R/profile_stage1.txt 2>&1; echo "profile rc=$? at ${SECONDS}s"
OMP_NUM_THREADS=4 timeout $((560 - SECONDS)) python3 -m pytest -v -rfs --tb=short -p no:cacheprovider \
  tests/test_kernels.py tests/test_packed_render.py tests/test_mlp.py tests/test_nerf_render.py > $R/tests.txt 2>&1
echo "tests rc=$?"; grep -E "FAILED|ERROR|passed|failed" $R/tests.txt | tail -8
grep -E "^E " $R/tests.txt | head -10
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
