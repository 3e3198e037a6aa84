#!/usr/bin/env bash
# The one report on AdaTime's 10 HAR scenarios (issue 14), for the default chosen on the
# development pairs (bench/har_dev_central.sh, bench/har_dev_federated.sh). No --config: what runs
# is the HAR recipe (since 2026-12-06 the dataclass defaults), exactly what a user gets by default.
# The federated runs reuse the central run's teachers (same scenario and seed).
# Usage: bash bench/har_final.sh [OUT_DIR]      (needs ../shared/data/HAR; ~1 h on 2 cores)
set -euo pipefail
OUT=${1:-bench/out/har-final}
COMMON="--data ../shared/data/HAR --dataset HAR --seeds 0,1,2 --jobs 2 --quiet"
unikd bench central $COMMON --methods unikd --out "$OUT/central" --label central-default
unikd bench federated $COMMON --clients 5 --partition iid --teachers "$OUT/central" \
  --out "$OUT/federated" --label fed-default
echo DONE
