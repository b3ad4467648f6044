#!/bin/bash
# One GPU call (run from the repo root with OUT set): the prior check at three guidance scales and the quality benchmark (new defaults vs the
# "before" overrides of issue 9), one process per part, merged afterwards with `prolific bench quality --merge`.
set -u
R=$OUT/r; mkdir -p $R /tmp/q
LIMIT=${LIMIT:-360}
BEFORE='{"prior": {"lora_lr": 0.001, "lora_t_min": 0.02, "lora_t_max": 0.98, "camera_dropout": 0.0, "lora_view_prompt": true, "front_half_width_deg": 45.0, "back_half_width_deg": 45.0, "dtype": "bf16"}, "nerf": {"mlp_lr": 0.01, "background_lr": 0.01, "random_background": 0.0, "sparsity_weight": 0.0, "opacity_weight": 0.0}, "geometry": {"lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-08, "density_threshold": 5.0, "fit_grid": false, "sdf_init": "metric", "anneal_fraction": 0.0, "normal_consistency_weight": 1000.0, "normal_consistency_on": "face", "laplacian_weight": 1000.0}, "texture": {"mlp_lr": 0.01, "train_background": false, "anneal_fraction": 0.0}}'
run() { local name=$1; shift
  ( timeout $LIMIT python3 -m prolific bench quality --preset demo --device cuda --out /tmp/q/$name --json $R/$name.json "$@" > $R/$name.log 2>&1; echo "$name rc=$?" >> $R/rc.txt ) & }
run div_after --prompts "" --guidances vsd
for p in "a red cube" "a green cone" "a blue torus" "a yellow snowman"; do
  s=${p// /_}
  for g in vsd sds; do
    run after_${g}_$s --prompts "$p" --guidances $g --diversity-prompt ""
    run before_${g}_$s --prompts "$p" --guidances $g --diversity-prompt "" --set "$BEFORE"
  done
done
for g in 2 3 5; do
  ( timeout $LIMIT python3 -m prolific.toy.check --guidance $g --out $R/check_g$g.json --grid $R/check_g$g.png > $R/check_g$g.log 2>&1 ) &
done
wait
for d in /tmp/q/*/*/object_*; do
  n=$(echo $d | sed 's|/tmp/q/||; s|/|__|g'); cp $d/turntable_0.png $R/tt_$n.png 2>/dev/null; done
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader > $R/gpu.txt
sort $R/rc.txt; tail -n 2 $R/check_g*.log
tar czf $OUT/results.tgz -C $OUT r && rm -rf $R; ls -la $OUT
