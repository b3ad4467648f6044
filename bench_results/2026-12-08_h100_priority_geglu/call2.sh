#!/bin/bash
# Session 36, call 2 (issue 12): the GPU tests of stage 35's changes (priority, geglu, the probe gathers, the LoRA
# kernels' gated forward, the hash grid's merge setting) and their kernel cases compiled; the hash grid alone on a
# render's layout (9 samples a ray as the opaque ball at 512 px keeps, 48 as the initial blob) for several
# merge_max_res; a profile of `best,geglu` at 512 px on the blob. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=/tmp/r; mkdir -p $R
OMP_NUM_THREADS=4 timeout 200 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider tests/test_graphs.py \
  tests/test_geglu.py tests/test_mlp.py tests/test_group_norms.py tests/test_speed.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; tail -1 $R/tests.txt; grep -E "^(FAILED|ERROR)|^E " $R/tests.txt | head -10
(cd tests && OMP_NUM_THREADS=4 timeout 150 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider \
  kernel_cases_lora.py kernel_cases_geglu.py kernel_cases.py) > $R/kernel_cases.txt 2>&1
echo "kernel cases rc=$? at ${SECONDS}s"; tail -1 $R/kernel_cases.txt; grep -E "^(FAILED|ERROR)|^E " $R/kernel_cases.txt | head -10
for S in 9 48; do
  mkdir -p $R/hg$S
  timeout 60 python3 -m prolific bench hashgrid --points 2M --layout rays --samples-per-ray $S --impl triton \
    --merge-max-res 0,64,160,256,512,2048 --out $R/hg$S > $R/hashgrid_$S.log 2>&1
  echo "hashgrid $S rc=$? at ${SECONDS}s"; grep -v "^\s*$" $R/hashgrid_$S.log | tail -8
  cp $R/hg$S/hashgrid.json $OUT/hashgrid_rays$S.json
done
timeout $((570 - SECONDS)) python3 -m prolific bench stage1 --opt best,geglu --resolutions 512 --steps 6 --warmup 3 \
  --field blob --profile --json $OUT/profile_blob.json > $R/profile_blob.log 2>&1
echo "profile rc=$? at ${SECONDS}s"; grep "ms/step\|profiled" $R/profile_blob.log
cp $R/tests.txt $OUT/call2_tests.txt; cp $R/kernel_cases.txt $OUT/call2_kernel_cases.txt
tar czf $OUT/logs2.tgz -C /tmp r; ls -la $OUT
