#!/usr/bin/env bash
# Issue 14's teacher levers on the HAR development pairs (configs/har-dev-pairs.txt), centralized,
# label-free: a larger DANN ensemble and longer DANN training, each against the HAR recipe
# (now the dataclass defaults: 3 members x 40 epochs) rerun by the same code. Every
# variant trains its own teachers (its own OUT sub-folder); the students are the recipe's.
# Usage: bash bench/har_dev_teachers.sh [OUT_DIR]   (run from the repo root; needs ../shared/data/HAR)
set -euo pipefail
DEV=$(tail -1 configs/har-dev-pairs.txt)
OUT=${1:-bench/out/har-dev-teachers}
B="unikd bench central --data ../shared/data/HAR --dataset HAR --scenarios $DEV --seeds 0,1,2 --methods unikd --jobs 2 --quiet"
$B --out "$OUT/default" --label default
$B --out "$OUT/ensemble5" --set teacher.ensemble=5 --label teacher-ensemble5
$B --out "$OUT/epochs80" --set teacher.epochs=80 --label teacher-epochs80
echo DONE
