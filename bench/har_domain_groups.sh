#!/usr/bin/env bash
# Per-domain federations on real HAR (issue 15): each of the 5 groups of
# configs/har-domain-groups.txt is one labelled source subject in the cloud and 5 edges, each
# holding a different target subject. Both teacher placements, 3 seeds. The federated DANN
# teacher of each (group, seed) is trained once (--cache-teachers, under OUT/fed-teachers) and
# reused by the other placement, so the second placement costs only the student rounds.
# Without --config the bench runs the packaged HAR recipe (shared/recipes/har.yaml); extra
# arguments go to every bench call, e.g. --config configs/har-central-best.yaml
# --set distill.cross_kd=expected, or --set distill.epochs=1 for a smoke run.
# Usage: [SCENARIOS="8->1+3+4+18+25"] bash bench/har_domain_groups.sh [OUT_DIR] [PLACEMENTS] [SEEDS] [BENCH ARGS ...]
set -euo pipefail
cd "$(dirname "$0")/.."
GROUPS_LIST=${SCENARIOS:-$(tail -1 configs/har-domain-groups.txt)}  # SCENARIOS=...: a subset
OUT=${1:-bench/out/har-domain-groups}
PLACEMENTS=${2:-edge cloud}
SEEDS=${3:-0,1,2}
shift 3 || shift $#
for p in $PLACEMENTS; do
  unikd bench federated --data ../shared/data/HAR --dataset HAR --scenarios "$GROUPS_LIST" \
    --partition per-domain --seeds "$SEEDS" --cache-teachers --out "$OUT" --jobs 2 --quiet \
    --set fed.teacher_placement="$p" --label "per-domain-$p" "$@"
done
echo DONE
