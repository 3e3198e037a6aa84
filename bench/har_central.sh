#!/usr/bin/env bash
# Issue 3's benchmark on real UCI-HAR: 10 scenarios x 3 seeds, one cached teacher per
# (scenario, seed), then UNI-KD, each fix switched alone, and the baselines on those teachers.
# Usage: bash bench/har_central.sh [OUT]   (about 45 min on 2 cores)
set -euo pipefail
OUT=${1:-bench/out/har-central}
B="unikd bench central --config configs/har-fixes.yaml --data ../shared/data/HAR --dataset HAR --seeds 0,1,2 --out $OUT --jobs 2"
$B --methods unikd
$B --methods unikd --label "unikd-reference-fixes-off" --set distill.reference_compat=true
$B --methods unikd --label "unikd+adv_to_student" --set distill.adv_to_student=true
$B --methods unikd --label "unikd-target_kd" --set distill.target_kd=false
$B --methods unikd --label "unikd-detach_weights" --set distill.detach_weights=false
$B --methods unikd --label "unikd-grl_ramp" --set distill.grl_ramp=false
$B --methods unikd --label "unikd-beta_natural_log" --set distill.beta_natural_log=false
$B --methods unikd --label "unikd-no_teacher_cache" --set distill.cache_teacher=false
$B --methods source-only,kd-target,dann-student,mobileda,aad,jku
# The official recipe end to end (its own weak teachers: 10 epochs at lr 1e-2, no ensemble).
unikd bench central --config configs/har-reference.yaml --data ../shared/data/HAR --dataset HAR \
  --seeds 0,1,2 --out "$OUT-reference" --jobs 2 --methods unikd,source-only
