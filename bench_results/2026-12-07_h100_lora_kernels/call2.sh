#!/bin/bash
# Session 32, call 2 (issue 12): the LoRA kernels' GPU tests again after call 1, with the tests' LoRA weights in
# fp32 as the estimator trains them (call 1 built them in the base layer's dtype) and the kernels-vs-peft bound.
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
OMP_NUM_THREADS=4 timeout 110 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider tests/kernel_cases_lora.py \
  tests/test_graphs.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; grep -E "FAILED|ERROR|passed|failed" $R/tests.txt | tail -8; grep -E "^E " $R/tests.txt | head -10
