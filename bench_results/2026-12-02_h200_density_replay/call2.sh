#!/bin/bash
# Session 27, call 2 (issue 12): this tree (occupancy on σ·step, the density pass replayed, the fused MLP's
# products TF32 under the tf32 switch, its backward's weights hoisted at 64 rows) against the landed backend
# (.gpu/landed = git archive HEAD backend). Stage 1 with the reference, `best` and `best` without tf32, side by
# side; the landed backend's `best`; stage 3 both ways; end-to-end demo (twice: the first compiles) and draft
# with the default `auto`; the GPU tests of the changed paths. Carry [".whl", ".gpu"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
NO_TF32=bf16,sdpa,channels-last,vae-matmul,vae-norm,unet-norm,batch,fused-adam,graphs,overlap
LANDED="env PYTHONPATH=/tmp/site:$PWD/.gpu/landed/backend"
timeout 150 python3 -m prolific bench stage1 --compare --opt best --opt $NO_TF32 --resolutions 64,512 --steps 8 \
  --warmup 3 --json $R/stage1.json > $R/stage1.log 2>&1; echo "stage1 rc=$? at ${SECONDS}s"
$LANDED timeout 80 python3 -m prolific bench stage1 --opt best --resolutions 64,512 --steps 8 --warmup 3 \
  --json $R/stage1_landed.json > $R/stage1_landed.log 2>&1; echo "stage1 landed rc=$? at ${SECONDS}s"
timeout 50 python3 -m prolific bench stage3 --opt best --steps 8 --warmup 3 --json $R/stage3.json > $R/stage3.log 2>&1
echo "stage3 rc=$? at ${SECONDS}s"
$LANDED timeout 50 python3 -m prolific bench stage3 --opt best --steps 8 --warmup 3 --json $R/stage3_landed.json \
  > $R/stage3_landed.log 2>&1; echo "stage3 landed rc=$? at ${SECONDS}s"
grep -h "ms/step\|speed-up\|eagerly\|Error" $R/stage*.log
for job in demo_first:demo demo_second:demo draft:draft; do
  name=${job%%:*}; preset=${job##*:}
  timeout 150 python3 -m prolific generate "a red cube" -o /tmp/e2e --name $name --preset $preset --device cuda --quiet \
    > $R/e2e_$name.log 2>&1
  echo "$name rc=$?: $(python3 -c "import json; print(json.load(open('/tmp/e2e/$name/meta.json'))['timings'])" 2>&1)"
done | tee $R/e2e.txt
echo "e2e done at ${SECONDS}s"
OMP_NUM_THREADS=4 timeout $((565 - SECONDS)) python3 -m pytest -v -rfs --tb=short -p no:cacheprovider \
  tests/test_kernels.py tests/test_packed_render.py tests/test_mlp.py tests/test_nerf_render.py > $R/tests.txt 2>&1
echo "tests rc=$?"; grep -E "FAILED|ERROR|passed|failed" $R/tests.txt | tail -8
grep -E "^E " $R/tests.txt | head -10
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
