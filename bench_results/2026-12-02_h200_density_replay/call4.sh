#!/bin/bash
# Session 27, call 4 (issue 12): stage 1 with `best` at 64 and 512 px after the replayed values are placed part
# by part (each held part freed once copied): the peak memory of what lands. Carry [".whl", ".gpu"].
set -u
source .gpu/lite.sh
R=$OUT/r; mkdir -p $R
timeout 150 python3 -m prolific bench stage1 --opt best --resolutions 64,512 --steps 8 --warmup 3 \
  --json $R/stage1_placed.json > $R/stage1_placed.log 2>&1; echo "stage1 rc=$? at ${SECONDS}s"
grep -h "ms/step\|eagerly\|Error" $R/stage1_placed.log
