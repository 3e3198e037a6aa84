#!/usr/bin/env bash
# Issue 15's placement benchmark on AdaTime's 10 HAR scenarios, a report only: the default
# (teacher on the edge) was chosen on the development pairs (bench/har_dev_federated.sh) and the
# per-domain groups (bench/har_domain_groups.sh) before this ran. Both placements reuse the
# teachers bench/har_final.sh trained under OUT/central (same scenario and seed), so the two rows
# differ only in where the teacher runs.
# Usage: bash bench/har_final_placement.sh [OUT_DIR]   (after bench/har_final.sh OUT_DIR)
set -euo pipefail
OUT=${1:-bench/out/har-final}
[ -d "$OUT/central/teachers" ] || { echo "no teachers in $OUT/central: run bench/har_final.sh $OUT first" >&2; exit 2; }
unikd bench federated --data ../shared/data/HAR --dataset HAR --seeds 0,1,2 --jobs 2 --quiet \
  --clients 5 --partition iid --teachers "$OUT/central" --out "$OUT/federated-cloud" \
  --set fed.teacher_placement=cloud --label fed-cloud
echo DONE
