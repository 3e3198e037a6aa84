#!/usr/bin/env bash
# Combinations of the fix switches, measured after each switch alone (bench/har_central.sh).
set -euo pipefail
OUT=${1:-bench/out/har-central}
B="unikd bench central --config configs/har-fixes.yaml --data ../shared/data/HAR --dataset HAR --seeds 0,1,2 --out $OUT --jobs 2 --methods unikd"
$B --label "unikd[kd:src,w:grad]" --set distill.target_kd=false --set distill.detach_weights=false
$B --label "unikd[kd:src,w:grad,2fwd]" --set distill.target_kd=false --set distill.detach_weights=false --set distill.double_target_forward=true
$B --label "unikd[reference+beta_fix]" --set distill.target_kd=false --set distill.detach_weights=false --set distill.double_target_forward=true --set distill.grl_ramp=false
$B --label "unikd[reference+beta_fix+adv]" --set distill.target_kd=false --set distill.detach_weights=false --set distill.double_target_forward=true --set distill.grl_ramp=false --set distill.adv_to_student=true
