#!/usr/bin/env bash
# Per-domain federations on real HAR (issue 15): each of the 5 groups of
# configs/har-domain-groups.txt is one labelled source subject in the cloud and 5 edges, each
# holding a different target subject. Both teacher placements, 3 seeds. The federated DANN
# teacher of each (group, seed) is trained once (--cache-teachers, under OUT/fed-teachers) and
# reused by the other placement, so the second placement costs only the student rounds.
# Without --config the bench runs the defaults (the HAR recipe, since 2026-12-06 the dataclass defaults); extra
# arguments go to every bench call, e.g. --config configs/har-central-best.yaml
# --set distill.cross_kd=expected, or --set distill.epochs=1 for a smoke run.
# PLACEMENTS: any of edge, cloud, iid (the IID control below), in that order.
# Usage: [SCENARIOS="8->1+3+4+18+25"] bash bench/har_domain_groups.sh [OUT_DIR] [PLACEMENTS] [SEEDS] [BENCH ARGS ...]
set -euo pipefail
cd "$(dirname "$0")/.."
GROUPS_LIST=${SCENARIOS:-$(tail -1 configs/har-domain-groups.txt)}  # SCENARIOS=...: a subset
OUT=${1:-bench/out/har-domain-groups}
PLACEMENTS=${2:-edge cloud}
SEEDS=${3:-0,1,2}
shift 3 || shift $#
# iid: the control for "per-domain against IID on the same subjects": the group's target subjects
# pooled and split IID over 5 edges, with the very teachers the edge placement cached (run it
# first), so only the windows' layout differs. OUT must hold one recipe's cached teachers.
iid_control() {
  local links="$OUT/iid-teachers/teachers" f name
  mkdir -p "$links"
  for f in "$OUT"/fed-teachers/*/*.pt; do
    [ -e "$f" ] || { echo "no cached teachers under $OUT/fed-teachers: run the edge placement first" >&2; exit 2; }
    name=$(basename "$f")
    if [ -L "$links/$name" ] && [ "$(readlink "$links/$name")" != "$(realpath "$f")" ]; then
      echo "two cached teachers named $name under $OUT/fed-teachers: one recipe per OUT" >&2; exit 2
    fi
    ln -sfn "$(realpath "$f")" "$links/$name"
  done
  unikd bench federated --data ../shared/data/HAR --dataset HAR --scenarios "$GROUPS_LIST" \
    --partition iid --clients 5 --seeds "$SEEDS" --teachers "$OUT/iid-teachers" --out "$OUT/iid" \
    --jobs 2 --quiet --set fed.teacher_placement=edge --label iid-pooled-edge "$@"
}
for p in $PLACEMENTS; do
  if [ "$p" = iid ]; then iid_control "$@"; continue; fi
  unikd bench federated --data ../shared/data/HAR --dataset HAR --scenarios "$GROUPS_LIST" \
    --partition per-domain --seeds "$SEEDS" --cache-teachers --out "$OUT" --jobs 2 --quiet \
    --set fed.teacher_placement="$p" --label "per-domain-$p" "$@"
done
echo DONE
