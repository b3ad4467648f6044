#!/bin/bash
# Session 25, call 3 (issue 12), on a fresh machine (no Triton cache): stage 1 with `best`, its kernels now
# unspecialised on the point count; end-to-end demo twice and draft with the default `auto` (overlap joined it);
# then the GPU tests of the changed paths. Carry [".whl", ".gpu"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
timeout 70 python3 -m prolific bench stage1 --opt best --resolutions 64,512 --steps 8 --warmup 3 \
  --json $R/stage1_unspecialised.json > $R/stage1.log 2>&1; echo "stage1 rc=$?"
grep -h "ms/step" $R/stage1.log
for job in demo_first:demo demo_second:demo draft:draft; do
  name=${job%%:*}; preset=${job##*:}
  timeout 170 python3 -m prolific generate "a red cube" -o /tmp/e2e --name $name --preset $preset --device cuda --quiet \
    > $R/e2e_$name.log 2>&1
  echo "$name rc=$?: $(python3 -c "import json; print(json.load(open('/tmp/e2e/$name/meta.json'))['timings'])" 2>&1)"
done | tee $R/e2e.txt
echo "e2e done at ${SECONDS}s"
OMP_NUM_THREADS=4 timeout $((430 - SECONDS)) python3 -m pytest -v -rfs --tb=short -p no:cacheprovider \
  tests/test_graphs.py tests/test_kernels.py tests/test_speed.py tests/test_mlp.py tests/test_vsd.py > $R/tests.txt 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR|SKIPPED" $R/tests.txt | grep -v "^tests/test_speed.py.*PASSED" | tail -30
tail -n 3 $R/tests.txt
echo "done at ${SECONDS}s"
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
