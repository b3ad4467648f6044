#!/bin/bash
# Session 34, call 2 (issue 12): the GPU tests of the UNet's layout-keeping transformer blocks as landed (with the
# graphs, the group norms and the speed options). Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
OMP_NUM_THREADS=4 timeout 300 python3 -m pytest -q -rfs --tb=short -p no:cacheprovider tests/test_channels_last.py \
  tests/test_group_norms.py tests/test_graphs.py tests/test_speed.py > $R/tests.txt 2>&1
echo "tests rc=$? at ${SECONDS}s"; tail -3 $R/tests.txt; grep -E "^(FAILED|ERROR)|^E " $R/tests.txt | head -10
cp $R/tests.txt $OUT/call2_tests.txt
