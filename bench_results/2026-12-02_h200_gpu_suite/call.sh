#!/bin/bash
# Session 29, call 3 (issue 12): the whole test suite on the H200 (the full preamble, nvdiffrast built), the test
# files dealt round-robin to 4 pytest processes running side by side. Carry [".whl"].
set -u
source .whl/preamble.sh
R=$OUT/r; mkdir -p $R
echo "preamble done at ${SECONDS}s"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
FILES=(tests/test_*.py)
for g in 0 1 2 3; do
  group=(); for i in "${!FILES[@]}"; do [ $((i % 4)) -eq $g ] && group+=("${FILES[$i]}"); done
  ( OMP_NUM_THREADS=4 timeout $((540 - SECONDS)) python3 -m pytest -q -rfEs --tb=short -p no:cacheprovider \
      "${group[@]}" > $R/tests_$g.txt 2>&1; echo "group $g rc=$?" >> $R/rc.txt ) &
done
wait
echo "tests done at ${SECONDS}s"; cat $R/rc.txt
for g in 0 1 2 3; do tail -1 $R/tests_$g.txt; done
grep -hE "^(FAILED|ERROR) " $R/tests_*.txt | head -20
grep -hE "^SKIPPED" $R/tests_*.txt | sort | uniq -c | sort -rn | head -20
tar czf $OUT/results.tgz -C $OUT r; ls -la $OUT
