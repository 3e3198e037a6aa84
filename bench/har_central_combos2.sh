#!/usr/bin/env bash
# Combinations that keep the intended target KD (the only form a federation can compute).
set -euo pipefail
OUT=${1:-bench/out/har-central}
B="unikd bench central --config configs/har-fixes.yaml --data ../shared/data/HAR --dataset HAR --seeds 0,1,2 --out $OUT --jobs 2 --methods unikd"
$B --label "unikd[2fwd]" --set distill.double_target_forward=true
$B --label "unikd[w:grad,2fwd]" --set distill.detach_weights=false --set distill.double_target_forward=true
$B --label "unikd[w:grad,adv]" --set distill.detach_weights=false --set distill.adv_to_student=true
