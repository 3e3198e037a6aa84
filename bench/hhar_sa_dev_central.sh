#!/usr/bin/env bash
# The second development set (issue 25): HHAR_SA's 10 dev pairs (configs/hhar-sa-dev-pairs.txt),
# seeds 0-2, centralized. Two recipes, each with its own DANN teachers: the dataclass defaults
# (1-member teacher, every spec §8 fix on) with the source-only baseline, and the HAR recipe
# (shared/config/recipes/har.yaml's switches: 3-member teacher, reference loss behaviour, cross KD
# in expectation). Results: bench/results/hhar_sa_dev_{defaults,har_recipe}.{json,md}.
# Usage (from the repo root): bash bench/hhar_sa_dev_central.sh [OUT_DIR]
set -euo pipefail
DEV=$(tail -1 configs/hhar-sa-dev-pairs.txt)
OUT=${1:-bench/out/hhar-sa-dev-central}
B="unikd bench central --data ../shared/data/HHAR_SA --dataset HHAR --scenarios $DEV --seeds 0,1,2
   --jobs 1 --quiet"
$B --methods unikd,source-only --out "$OUT/defaults"
$B --methods unikd --set teacher.ensemble=3 --set distill.reference_compat=true \
   --set distill.cross_kd=expected --out "$OUT/har-recipe" --label har-recipe
echo DONE
