#!/bin/bash
# Session 33, call 1 (issue 12): the GPU tests of the LoRA kernels (rerun after their fix), the graphs and the group
# norms (the encoder in both VAE layouts); stage 1 (with the reference), stage 3 and stage 2 with `best` against
# `best` + vae-channels-last side by side in one process each; then a profile of a 512 px stage-1 step.
# Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
OMP_NUM_THREADS=4 timeout 150 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider tests/kernel_cases_lora.py \
  tests/test_graphs.py tests/test_group_norms.py tests/test_speed.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; grep -E "FAILED|ERROR|passed|failed" $R/tests.txt | tail -8; grep -E "^E " $R/tests.txt | head -10
for F in solid blob; do
  timeout 120 python3 -m prolific bench stage1 --compare --opt best,vae-channels-last --opt best \
    --resolutions 64,512 --steps 8 --warmup 3 --field $F --json $R/stage1_$F.json > $R/stage1_$F.log 2>&1
  echo "stage1 $F rc=$? at ${SECONDS}s"
done
for s in stage3 stage2; do
  timeout 80 python3 -m prolific bench $s --opt best,vae-channels-last --opt best --steps 8 --warmup 3 \
    --json $R/$s.json > $R/$s.log 2>&1; echo "$s rc=$? at ${SECONDS}s"
done
grep -h "ms/step\|speed-up\|eagerly\|Error" $R/stage*.log
timeout $((560 - SECONDS)) python3 .gpu/profile_512.py solid vae-channels-last > $R/profile_solid.txt 2>&1
echo "profile rc=$? at ${SECONDS}s"; grep -A14 "^per step" $R/profile_solid.txt
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
