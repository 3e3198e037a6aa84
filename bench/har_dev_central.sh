#!/usr/bin/env bash
set -euxo pipefail
# Centralized variants on the HAR development pairs (configs/har-dev-pairs.txt), sharing teachers.
# Usage: bash bench/har_dev_central.sh [OUT_DIR]   (run from the repo root; needs ../shared/data/HAR)
DEV=$(tail -1 configs/har-dev-pairs.txt)
OUT=${1:-bench/out/har-dev-central}
B="unikd bench central --data ../shared/data/HAR --dataset HAR --scenarios $DEV --seeds 0,1,2 --methods unikd --out $OUT --jobs 2 --quiet"
$B --config configs/har-fixes.yaml --label unikd-default
$B --config configs/har-central-best.yaml --label reference-paired
$B --config configs/har-central-best.yaml --set distill.cross_kd=expected --label reference-expected
echo DONE
